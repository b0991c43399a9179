"""Screenshot of the backward-graph explorer (``tinyllm.trace.to_html``) for the README.

Builds the page of one training step of a 2-layer tiny GPT, opens it in headless Chromium,
steps to the first LayerNorm node and opens its card, and saves the window as a PNG, with
the same browser code as tests/test_explorer_browser.py (tests/browser.py)::

    python examples/explorer_screenshot.py                  # docs/explorer.png
    python examples/explorer_screenshot.py --out shot.png --page explorer.html

Needs Chromium, ChromeDriver and selenium: apt-get install chromium chromium-driver;
pip install selenium.
"""
import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser import browser, open_page, pose_explorer, screenshot  # noqa: E402
from tinyllm import trace  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "explorer.png"),
                   help="the PNG to write (default: docs/explorer.png)")
    p.add_argument("--page", default=None,
                   help="also keep the HTML page here (default: a temporary file)")
    p.add_argument("--n-layer", type=int, default=2, help="blocks of the tiny GPT (default: 2)")
    p.add_argument("--dtype", default="float64",
                   help="float64 (default: the page's finite-difference checks run) or float32")
    p.add_argument("--width", type=int, default=1400, help="window width (default: 1400)")
    p.add_argument("--height", type=int, default=1000, help="window height (default: 1000)")
    args = p.parse_args(argv)

    model, idx, targets, _ = trace.tiny_gpt_example(n_layer=args.n_layer, dtype=args.dtype)
    _, loss = model(idx, targets)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(args.page) if args.page else Path(tmp) / "explorer.html"
        trace.to_html(loss, model=model, path=str(page))
        with browser(args.width, args.height, skip=False) as driver:
            seconds = open_page(driver, page)
            k = pose_explorer(driver, page)
            out = screenshot(driver, args.out)
    print(f"{out}: the explorer of a {args.n_layer}-layer tiny GPT, node {k} (LayerNorm) "
          f"open; the page was ready in {seconds:.2f} s")
    return out


if __name__ == "__main__":
    main()
