"""Opens the built HTML docs in headless Chromium and checks how they look.

For each page (default: index, tutorial, benchmarks) at a window 1280 px
wide, a script run in the page after it has loaded reports every code block
whose text is wider than its box (cut off, or hidden behind a scroll bar)
every image that did not load, and every error the theme itself shows in
the page (furo's box for a ``.. contents::`` directive); a screenshot of the page is saved. Exits
1 if anything was found, 0 otherwise. Run by hand (Debian's ``chromium``
package; ``apt-get install chromium``)::

    python3 dev.py run python tools/check_docs_browser.py            # builds docs first
    python3 dev.py run python tools/check_docs_browser.py --html DIR --pages index deploy

The pages are checked on a copy of the HTML with the check script added,
opened from files (nothing is served, nothing reached over the network).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PAGES = ('index', 'tutorial', 'benchmarks')
MARK = 'data-docs-check'

# Runs once the page and its images have loaded; leaves its findings as
# JSON in an attribute of <body>, which --dump-dom prints.
CHECK_SCRIPT = '''
<script>
window.addEventListener('load', function () {
  var found = {overflow: [], missing: [], theme: [], blocks: 0, images: 0};
  // The theme's own complaints (furo writes them into ::before content).
  document.querySelectorAll('body *').forEach(function (el) {
    var before = getComputedStyle(el, '::before').content || '';
    if (before.indexOf('ERROR') >= 0) {
      found.theme.push(before.slice(0, 120));
    }
  });
  document.querySelectorAll('div.highlight pre, pre.literal-block')
    .forEach(function (pre) {
      found.blocks += 1;
      if (pre.scrollWidth > pre.clientWidth + 1) {
        var lines = pre.textContent.split('\\n');
        var longest = lines.reduce(function (a, b) {
          return b.length > a.length ? b : a; }, '');
        found.overflow.push({hidden_px: pre.scrollWidth - pre.clientWidth,
                             line: longest.slice(0, 100)});
      }
    });
  document.querySelectorAll('img').forEach(function (img) {
    found.images += 1;
    if (!img.complete || img.naturalWidth === 0) {
      found.missing.push(img.getAttribute('src'));
    }
  });
  document.body.setAttribute('%s', JSON.stringify(found));
});
</script>
''' % MARK


def build_html(out_dir):
    """Builds the docs with warnings as errors into ``out_dir``."""
    subprocess.run([sys.executable, '-m', 'sphinx', '-W', '--keep-going',
                    '-E', '-q', '-b', 'html', os.path.join(ROOT, 'docs'),
                    out_dir], check=True)


def chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        path = shutil.which(name)
        if path:
            return path
    sys.exit('no Chromium found: apt-get install chromium')


def _browser(args, width, height, timeout=120):
    # The flags that keep a headless Chromium off the network and quiet.
    cmd = [chromium(), '--headless', '--no-sandbox', '--disable-gpu',
           '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync',
           '--hide-scrollbars', '--virtual-time-budget=5000',
           '--window-size={},{}'.format(width, height)] + args
    return subprocess.run(cmd, capture_output=True, text=True,
                          timeout=timeout)


def check_page(html_dir, page, width, shots_dir):
    """``(findings dict, screenshot path)`` of one page."""
    path = os.path.join(html_dir, page + '.html')
    with open(path, encoding='utf-8') as f:
        text = f.read()
    checked = os.path.join(html_dir, page + '.checked.html')
    with open(checked, 'w', encoding='utf-8') as f:
        f.write(text.replace('</body>', CHECK_SCRIPT + '</body>', 1))
    url = 'file://' + os.path.abspath(checked)
    with tempfile.TemporaryDirectory() as profile:
        done = _browser(['--user-data-dir=' + profile, '--dump-dom', url],
                        width, 900)
    match = re.search(MARK + r'="([^"]*)"', done.stdout)
    if not match:
        raise RuntimeError('{}: the check did not run (chromium: {})'.format(
            page, done.stderr.strip()[-300:]))
    found = json.loads(match.group(1).replace('&quot;', '"')
                       .replace('&amp;', '&').replace('&lt;', '<')
                       .replace('&gt;', '>'))
    shot = os.path.join(shots_dir, page + '.png')
    with tempfile.TemporaryDirectory() as profile:
        _browser(['--user-data-dir=' + profile, '--screenshot=' + shot,
                  'file://' + os.path.abspath(path)], width, 2400)
    return found, shot


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--html', help='built HTML (default: build now)')
    parser.add_argument('--pages', nargs='+', default=list(DEFAULT_PAGES))
    parser.add_argument('--width', type=int, default=1280)
    parser.add_argument('--screenshots', default=os.path.join(
        ROOT, '.cache', 'docs_screenshots'))
    args = parser.parse_args(argv)
    os.makedirs(args.screenshots, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        html = os.path.join(tmp, 'html')
        if args.html:
            shutil.copytree(args.html, html)
        else:
            build_html(html)
        problems = 0
        for page in args.pages:
            found, shot = check_page(html, page, args.width,
                                     args.screenshots)
            problems += (len(found['overflow']) + len(found['missing']) +
                         len(found['theme']))
            print('{}: {} code blocks, {} wider than their box; {} images, '
                  '{} missing; screenshot {}'.format(
                      page, found['blocks'], len(found['overflow']),
                      found['images'], len(found['missing']), shot))
            for item in found['overflow']:
                print('  code {} px too wide: {}'.format(item['hidden_px'],
                                                        item['line']))
            for src in found['missing']:
                print('  image missing: {}'.format(src))
            for text in found['theme']:
                print('  theme error shown: {}'.format(text))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
