"""chainer_finetune.detect and ``chainer-finetune detect``, offline.

Detection rows are built here; the CLI runs a real (generated) Caffe net
whose InnerProduct bias *is* a fixed block of detection rows, loaded by
load_caffe, so the command's whole path runs without the SSD layers.
The real detectors are in tests/test_detectors.py.
"""

import os

import chainer_finetune  # noqa: F401  (must precede `import chainer`)

import numpy  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from chainer_finetune import cli, detect, hub  # noqa: E402
from chainer_finetune.caffe.writer import NetWriter  # noqa: E402
from chainer_finetune.errors import CaffeModelError  # noqa: E402

#: Two detections of image 0 (a cat at 0.9, a dog at 0.6, one corner out
#: of the image), one of image 1, and OpenCV's zero padding.
ROWS = numpy.array([[0, 8, 0.6, 0.1, 0.2, 0.5, 0.6],
                    [0, 12, 0.9, -0.05, 0.5, 0.5, 1.2],
                    [1, 3, 0.3, 0.0, 0.0, 1.0, 1.0],
                    [0, 0, 0.0, 0.0, 0.0, 0.0, 0.0],
                    [0, 0, 0.0, 0.0, 0.0, 0.0, 0.0]],
                   numpy.float32)[None, None]


def test_decode_splits_sorts_scales_and_clips():
    first, second = detect.decode_detections(ROWS, [(200, 100), (10, 20)])
    numpy.testing.assert_array_equal(first.labels, [12, 8])
    numpy.testing.assert_allclose(first.scores, [0.9, 0.6])
    # x by the width (100), y by the height (200); clipped to the image.
    numpy.testing.assert_allclose(first.boxes, [[0, 100, 50, 200],
                                                [10, 40, 50, 120]],
                                  rtol=1e-6, atol=1e-5)
    numpy.testing.assert_array_equal(second.labels, [3])
    numpy.testing.assert_allclose(second.boxes, [[0, 0, 20, 10]])
    assert first.labels.dtype == numpy.int32
    assert first.boxes.dtype == numpy.float32


def test_decode_threshold_no_clip_and_caffe_empty_rows():
    found, = detect.decode_detections(ROWS, [(200, 100)], threshold=0.6,
                                      clip=False)
    numpy.testing.assert_array_equal(found.labels, [12])
    numpy.testing.assert_allclose(found.boxes, [[-5, 100, 50, 240]],
                                  rtol=1e-6)
    # Caffe marks "nothing found" with image id -1.
    empty, = detect.decode_detections(
        numpy.array([[-1, -1, -1, -1, -1, -1, -1]], numpy.float32),
        [(5, 5)])
    assert empty.labels.shape == (0,) and empty.boxes.shape == (0, 4)


def test_decode_rejects_rows_of_other_widths():
    with pytest.raises(CaffeModelError, match='7 values'):
        detect.decode_detections(numpy.zeros((1, 1, 3, 6)), [(5, 5)])


def test_input_blob_is_resized_bgr_minus_mean_times_scale():
    rng = numpy.random.RandomState(0)
    image = rng.randint(0, 256, (6, 8, 3)).astype(numpy.uint8)
    same = detect.input_blob(image, (6, 8), mean=(1, 2, 3), scale=0.5)
    expected = (image[:, :, ::-1].transpose(2, 0, 1) -
                numpy.array([1, 2, 3])[:, None, None]) * 0.5
    numpy.testing.assert_allclose(same, expected, rtol=1e-6)
    # A 2x upscale of a constant image stays constant; grayscale and RGBA
    # become 3 channels.
    flat = numpy.full((3, 4), 7, numpy.uint8)
    assert (detect.input_blob(flat, 6) == 7).all()
    rgba = numpy.dstack([image, numpy.zeros((6, 8), numpy.uint8)])
    numpy.testing.assert_array_equal(detect.input_blob(rgba, (3, 4)),
                                     detect.input_blob(image, (3, 4)))


def test_input_blob_matches_opencv_blob_from_image():
    cv2 = pytest.importorskip('cv2')
    rng = numpy.random.RandomState(1)
    # A smooth image (as photographs are) upscaled and downscaled.
    ramp = numpy.add.outer(numpy.arange(37), numpy.arange(53)) * 2
    image = numpy.dstack([ramp, ramp[::-1], 255 - ramp]).clip(0, 255)
    image = (image + rng.randint(0, 5, image.shape)).clip(0, 255).astype(
        numpy.uint8)
    for size in ((300, 300), (20, 31)):
        ours = detect.input_blob(image, size, (127.5, 127.5, 127.5),
                                 0.007843)
        theirs = cv2.dnn.blobFromImage(
            numpy.ascontiguousarray(image[:, :, ::-1]), 0.007843,
            size[::-1], (127.5, 127.5, 127.5), swapRB=False)[0]
        # OpenCV resizes 8-bit images in fixed point: one gray level.
        assert numpy.abs(ours - theirs).max() <= 0.007843 * 1.001


def rows_net(directory, rows, name='rows'):
    """A Caffe net whose output ``rows`` is ``rows`` whatever the input."""
    w = NetWriter(name)
    w.input('data', (1, 3, 12, 16))
    flat = rows.reshape(-1)
    w.layer('fc', 'InnerProduct', 'data', 'fc',
            params={'inner_product_param': {'num_output': flat.size}},
            blobs=[numpy.zeros((flat.size, 3 * 12 * 16)), flat])
    w.layer('reshape', 'Reshape', 'fc', 'rows',
            params={'reshape_param': {'shape': {'dim': [
                0, 1, len(rows), 7]}}})
    model = os.path.join(directory, name + '.caffemodel')
    prototxt = os.path.join(directory, name + '.prototxt')
    w.write_caffemodel(model)
    w.write_prototxt(prototxt)
    return model, prototxt


def test_detect_runs_a_net_and_decodes_per_image(tmp_path):
    model, prototxt = rows_net(str(tmp_path), ROWS[0, 0])
    net = chainer_finetune.load_caffe(model, prototxt)
    images = [numpy.zeros((200, 100, 3), numpy.uint8),
              numpy.zeros((10, 20), numpy.uint8)]
    with pytest.raises(CaffeModelError, match='no DetectionOutput'):
        detect.detect(net, images, size=(12, 16))
    # One image per batch: this stand-in repeats image 0's rows each time.
    found = detect.detect(net, images, size=(12, 16), threshold=0.5,
                          output_name='rows', batchsize=1)
    numpy.testing.assert_array_equal(found[0].labels, [12, 8])
    numpy.testing.assert_allclose(found[1].boxes, [[0, 5, 10, 10],
                                                   [2, 2, 10, 6]], atol=1e-5)
    # Both images in one batch: the rows (one block per image here) are
    # assigned by their image id, all 0, whatever block holds them; image
    # 1's own row scores 0.3, under the threshold.
    both = detect.detect(net, images, size=(12, 16), threshold=0.5,
                         output_name='rows')
    numpy.testing.assert_array_equal(both[0].labels, [12, 12, 8, 8])
    assert both[1].labels.size == 0


def test_detect_calls_any_net_like_callable():
    seen = {}

    def net(inputs, outputs):
        seen.update(inputs=inputs, outputs=outputs)
        return (ROWS.copy(),)
    found = detect.detect(net, [numpy.zeros((200, 100, 3), numpy.uint8)],
                          size=4, output_name='out', threshold=0.0)
    assert seen['outputs'] == ['out']
    assert seen['inputs']['data'].shape == (1, 3, 4, 4)
    numpy.testing.assert_array_equal(found[0].labels, [12, 8])


def test_draw_detections_marks_the_boxes():
    image = numpy.full((120, 160, 3), 128, numpy.uint8)
    found = detect.Detections(numpy.array([8], numpy.int32),
                              numpy.array([0.75], numpy.float32),
                              numpy.array([[20, 40, 100, 110]],
                                          numpy.float32))
    picture = numpy.asarray(detect.draw_detections(image, found,
                                                   ('bg',) + ('x',) * 8))
    assert picture.shape == image.shape
    colour = numpy.array(detect._colour(8))
    # The box's bottom edge and right edge are drawn, the inside is not.
    assert (picture[109, 60] == colour).all()
    assert (picture[80, 99] == colour).all()
    assert (picture[80, 60] == 128).all()
    assert (picture[5, 5] == 128).all()
    # The caption sits on a filled label above the box.
    assert (picture[30:40, 20:40] == colour).all(axis=-1).any()
    # Nothing found: the picture is the image.
    none = detect.decode_detections(numpy.zeros((1, 1, 1, 7)), [(120, 160)])
    numpy.testing.assert_array_equal(
        numpy.asarray(detect.draw_detections(image, none[0])), image)


def test_label_text_and_line_format():
    assert detect.label_text(8, hub.MODELS['mobilenet_ssd_voc'].label_names
                             ) == 'cat (8)'
    assert detect.label_text(30, ('a', 'b')) == '30'
    assert detect.format_detection('a.png', 1, 0.99996, [1, 2.25, 3, 4],
                                   ('background', 'face')) == \
        'a.png\tface (1)\t1.0000\t1.0,2.2,3.0,4.0'


def test_known_detectors_declare_their_input():
    face = hub.MODELS['res10_ssd_face']
    voc = hub.MODELS['mobilenet_ssd_voc']
    assert (face.task, voc.task) == ('detection', 'detection')
    assert face.mean_bgr == (104.0, 177.0, 123.0) and face.input_scale is None
    assert voc.mean_bgr == (127.5,) * 3 and voc.input_scale == 0.007843
    assert face.input_size == voc.input_size == 300
    assert face.label_names == ('background', 'face')
    assert len(voc.label_names) == 21
    assert [voc.label_names[i] for i in (2, 8, 13, 14, 15)] == [
        'bicycle', 'cat', 'horse', 'motorbike', 'person']
    assert hub.MODELS['open_nsfw'].task == 'classification'


def _photo(directory, name, size=(30, 40)):
    path = os.path.join(directory, name)
    Image.fromarray(numpy.zeros(size + (3,), numpy.uint8)).save(path)
    return path


def test_cli_detect_prints_lines_and_writes_pngs(tmp_path, capsys):
    model, prototxt = rows_net(str(tmp_path), ROWS[0, 0])
    photo = _photo(str(tmp_path), 'cat.jpg', (200, 100))
    out = str(tmp_path / 'out')
    argv = ['detect', '--caffemodel', model, '--prototxt', prototxt,
            '--output-blob', 'rows', '--threshold', '0.5', '--mean', '1',
            '--out', out, photo]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [photo + '\t12\t0.9000\t0.0,100.0,50.0,200.0',
                     photo + '\t8\t0.6000\t10.0,40.0,50.0,120.0']
    picture = Image.open(os.path.join(out, 'cat.png'))
    assert picture.size == (100, 200) and picture.mode == 'RGB'
    # Never over a user's file without --force.
    assert cli.main(argv) == 2
    assert 'already exists; pass --force' in capsys.readouterr().err
    assert cli.main(argv + ['--force']) == 0


@pytest.mark.parametrize('extra, message', [
    (['--size', '0'], 'positive size'),
    (['--mean', '1,2'], 'mean V or B,G,R'),
])
def test_cli_detect_bad_option_values(tmp_path, capsys, extra, message):
    photo = _photo(str(tmp_path), 'a.png')
    with pytest.raises(SystemExit) as exit_info:   # argparse's usage error
        cli.main(['detect', '--caffemodel', 'x', photo] + extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_cli_detect_missing_model_is_one_line(tmp_path, capsys):
    photo = _photo(str(tmp_path), 'a.png')
    assert cli.main(['detect', '--caffemodel', 'missing.caffemodel',
                     '--size', '3,4', photo]) == 2
    err = capsys.readouterr().err
    assert 'missing.caffemodel' in err and len(err.strip().splitlines()) == 1


def test_cli_detect_checks_images_and_outputs_first(tmp_path, capsys):
    one = _photo(str(tmp_path), 'a.png')
    os.makedirs(str(tmp_path / 'b'))
    other = _photo(str(tmp_path / 'b'), 'a.jpg')
    assert cli.main(['detect', '--caffemodel', 'x', '--out',
                     str(tmp_path / 'o'), one, other]) == 2
    assert 'would both be drawn into' in capsys.readouterr().err
    (tmp_path / 'bad.png').write_bytes(b'not a picture')
    assert cli.main(['detect', '--caffemodel', 'x',
                     str(tmp_path / 'bad.png')]) == 2
    assert 'cannot decode' in capsys.readouterr().err


def test_cli_size_and_mean_parsers():
    assert cli.parse_size('300') == (300, 300)
    assert cli.parse_size('240x320') == (240, 320)
    assert cli.parse_mean('104,177,123') == (104.0, 177.0, 123.0)
    assert cli.parse_mean('127.5') == (127.5,) * 3
