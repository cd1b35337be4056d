"""NumPy references of the SSD fork's layers (weiliu89/caffe, branch ssd):
Normalize, Permute, PriorBox, DetectionOutput, written as loops that follow
the fork's C++ (normalize_layer.cpp, permute_layer.cpp, prior_box_layer.cpp,
detection_output_layer.cpp, util/bbox_util.cpp) rather than the library's
vectorized code."""

import math

import numpy as np

from chainer_finetune.caffe import caffe_pb2

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


def normalize(x, scale, p):
    """NormalizeLayer::Forward_cpu (float64)."""
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    scale = np.asarray(scale, np.float64).reshape(-1)
    for n in range(x.shape[0]):
        sample = x[n]
        if p.across_spatial:
            y[n] = sample / math.sqrt((sample ** 2).sum() + p.eps)
        else:
            norm = np.sqrt((sample ** 2).sum(axis=0) + p.eps)
            y[n] = sample / norm
        if p.channel_shared:
            y[n] *= scale[0]
        else:
            for c in range(x.shape[1]):
                y[n, c] *= scale[c]
    return y


def permute(x, p):
    """PermuteLayer: the given order, then the missing axes in order; the
    index arithmetic of its Permute() kernel."""
    orders = list(p.order)
    orders += [i for i in range(x.ndim) if i not in orders]
    new_shape = [x.shape[o] for o in orders]
    old_steps = [int(np.prod(x.shape[i + 1:])) for i in range(x.ndim)]
    new_steps = [int(np.prod(new_shape[i + 1:])) for i in range(x.ndim)]
    flat = x.ravel()
    out = np.empty(x.size, x.dtype)
    for i in range(x.size):
        old_idx, idx = 0, i
        for j in range(x.ndim):
            old_idx += (idx // new_steps[j]) * old_steps[orders[j]]
            idx %= new_steps[j]
        out[i] = flat[old_idx]
    return out.reshape(new_shape)


def _prior_settings(p):
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(ar)
            if p.flip:
                ratios.append(float(F32(1.0 / ar)))
    if p.HasField('img_h') or p.HasField('img_w'):
        img = (p.img_h, p.img_w)
    else:
        img = (p.img_size, p.img_size)
    if p.HasField('step_h') or p.HasField('step_w'):
        step = (p.step_h, p.step_w)
    else:
        step = (p.step, p.step)
    return ratios, img, step


def prior_box(feature_shape, image_shape, p):
    """PriorBoxLayer::Forward_cpu: (1, 2, H * W * num_priors * 4)."""
    ratios, (img_h, img_w), (step_h, step_w) = _prior_settings(p)
    height, width = feature_shape[2:4]
    if not (img_h and img_w):
        img_h, img_w = image_shape[2:4]
    if not (step_h and step_w):
        step_w, step_h = F32(img_w) / F32(width), F32(img_h) / F32(height)
    boxes = []
    for h in range(height):
        for w in range(width):
            cx = F32((F32(w) + F32(p.offset)) * F32(step_w))
            cy = F32((F32(h) + F32(p.offset)) * F32(step_h))
            sizes = []
            for s, min_size in enumerate(p.min_size):
                min_size = int(min_size)
                sizes.append((min_size, min_size))
                if len(p.max_size):
                    side = math.sqrt(min_size * int(p.max_size[s]))
                    sizes.append((side, side))
                for ar in ratios:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    sizes.append((min_size * math.sqrt(ar),
                                  min_size / math.sqrt(ar)))
            for bw, bh in sizes:
                bw, bh = float(F32(bw)), float(F32(bh))
                boxes += [(cx - bw / 2.) / img_w, (cy - bh / 2.) / img_h,
                          (cx + bw / 2.) / img_w, (cy + bh / 2.) / img_h]
    boxes = np.array(boxes, F32)
    if p.clip:
        boxes = np.minimum(np.maximum(boxes, 0.), 1.)
    variance = list(p.variance) or [0.1]
    variances = np.array(variance * (boxes.size // len(variance)), F32)
    return np.stack([boxes, variances])[None]


def _decode(prior, var, box, code_type, encoded):
    if encoded:
        var = [1.0] * 4
    if code_type == caffe_pb2.PriorBoxParameter.CORNER:
        return [prior[k] + var[k] * box[k] for k in range(4)]
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    if code_type == caffe_pb2.PriorBoxParameter.CORNER_SIZE:
        size = [pw, ph, pw, ph]
        return [prior[k] + var[k] * box[k] * size[k] for k in range(4)]
    cx = var[0] * box[0] * pw + (prior[0] + prior[2]) / 2.
    cy = var[1] * box[1] * ph + (prior[1] + prior[3]) / 2.
    w = math.exp(var[2] * box[2]) * pw
    h = math.exp(var[3] * box[3]) * ph
    return [cx - w / 2., cy - h / 2., cx + w / 2., cy + h / 2.]


def _size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return 0.
    return (b[2] - b[0]) * (b[3] - b[1])


def jaccard(a, b):
    """JaccardOverlap of two normalized boxes."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.
    inter = w * h
    return inter / (_size(a) + _size(b) - inter)


def nms(boxes, scores, threshold, nms_threshold, eta, top_k):
    """ApplyNMSFast: kept indices, best first."""
    order = sorted((i for i in range(len(scores)) if scores[i] > threshold),
                   key=lambda i: -scores[i])          # stable, like the fork
    if top_k > -1:
        order = order[:top_k]
    kept, adaptive = [], nms_threshold
    for idx in order:
        keep = all(jaccard(boxes[idx], boxes[k]) <= adaptive for k in kept)
        if keep:
            kept.append(idx)
            if eta < 1 and adaptive > 0.5:
                adaptive *= eta
    return kept


def detection_output(loc, conf, prior, p):
    """DetectionOutputLayer::Forward_cpu: (1, 1, rows, 7), rows by image,
    label and NMS order; one [i, -1, ...] row per image if none."""
    n = loc.shape[0]
    num_priors = prior.shape[2] // 4
    num_loc = 1 if p.share_location else p.num_classes
    loc = np.asarray(loc, np.float64).reshape(n, num_priors, num_loc, 4)
    conf = np.asarray(conf, np.float64).reshape(n, num_priors, -1)
    priors = np.asarray(prior[0, 0], np.float64).reshape(-1, 4)
    variances = np.asarray(prior[0, 1], np.float64).reshape(-1, 4)
    threshold = p.confidence_threshold if p.HasField(
        'confidence_threshold') else -FLT_MAX
    top_k = p.nms_param.top_k if p.nms_param.HasField('top_k') else -1
    rows = []
    for i in range(n):
        indices = {}
        for c in range(p.num_classes):
            if c == p.background_label_id:
                continue
            lc = 0 if p.share_location else c
            boxes = [_decode(priors[j], variances[j], loc[i, j, lc],
                             p.code_type, p.variance_encoded_in_target)
                     for j in range(num_priors)]
            indices[c] = (nms(boxes, conf[i, :, c], threshold,
                              p.nms_param.nms_threshold, p.nms_param.eta,
                              top_k), boxes)
        found = sum(len(kept) for kept, _ in indices.values())
        if p.keep_top_k > -1 and found > p.keep_top_k:
            pairs = sorted(((conf[i, j, c], c, j)
                            for c, (kept, _) in indices.items()
                            for j in kept), key=lambda t: -t[0])
            pairs = pairs[:p.keep_top_k]
            indices = {c: ([j for _, c2, j in pairs if c2 == c], boxes)
                       for c, (_, boxes) in indices.items()}
        for c in sorted(indices):
            kept, boxes = indices[c]
            rows += [[i, c, conf[i, j, c]] + list(boxes[j]) for j in kept]
    if not rows:
        rows = [[i] + [-1] * 6 for i in range(n)]
    return np.array(rows, np.float64).reshape(1, 1, -1, 7)


def run_layer(layer, blobs, bottoms):
    """Tops of one SSD layer, for ``caffe_reference.run_layer``; None for
    another type."""
    t = layer.type
    if t == 'Normalize':
        return [normalize(bottoms[0], blobs[0], layer.norm_param)]
    if t == 'Permute':
        return [permute(bottoms[0], layer.permute_param)]
    if t == 'PriorBox':
        image = bottoms[1].shape if len(bottoms) > 1 else None
        return [prior_box(bottoms[0].shape, image, layer.prior_box_param)]
    if t == 'DetectionOutput':
        return [detection_output(*bottoms[:3],
                                 layer.detection_output_param)]
    return None
