"""The ``restorekit serve`` page for keyboard and screen-reader users (WCAG 2.2 AA essentials).

Static checks read the page's files exactly as the server serves them (``restorekit.web.app``
reads the same package files): names of controls, landmarks, live regions, groups, focus styles and
the text contrast computed from the stylesheet's own colours. One browser test, skipped where no
Chromium and chromedriver are installed, restores a face with the keyboard alone and reads what the
status region said.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

PAGE = resources.files("restorekit.web") / "page"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# ------------------------------------------------------------------------------------------ the HTML


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def walk(self) -> list[Node]:
        out = [self]
        for c in self.children:
            if isinstance(c, Node):
                out += c.walk()
        return out

    def text(self) -> str:
        return " ".join("".join(c if isinstance(c, str) else f" {c.text()} " for c in self.children).split())

    def ancestors(self) -> list[Node]:
        out, p = [], self.parent
        while p is not None:
            out.append(p)
            p = p.parent
        return out


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        assert node is not None and node.parent is not None, f"index.html: </{tag}> closes nothing"
        self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_page() -> Node:
    builder = TreeBuilder()
    builder.feed((PAGE / "index.html").read_text(encoding="utf-8"))
    builder.close()
    return builder.root


def by_id(root: Node) -> dict[str, Node]:
    return {n.attrs["id"]: n for n in root.walk() if "id" in n.attrs}


def accessible_name(node: Node, root: Node) -> str:
    """The name a control gets from aria-labelledby, aria-label, its label(s) or, for a button, its text."""
    ids = by_id(root)
    if node.attrs.get("aria-labelledby"):
        return " ".join(ids[i].text() for i in node.attrs["aria-labelledby"].split())
    if node.attrs.get("aria-label", "").strip():
        return node.attrs["aria-label"].strip()
    labels = [n for n in root.walk() if n.tag == "label" and n.attrs.get("for") == node.attrs.get("id")]
    labels += [a for a in node.ancestors() if a.tag == "label"]
    if labels:
        return " ".join(lab.text() for lab in labels)
    return node.text() if node.tag == "button" else ""


def test_the_page_has_a_language_a_title_one_h1_and_landmarks() -> None:
    root = parse_page()
    nodes = root.walk()
    html = next(n for n in nodes if n.tag == "html")
    assert re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]+)*", html.attrs.get("lang", "")), html.attrs
    assert [n.text() for n in nodes if n.tag == "title"] == ["restorekit — restore and compare faces"]
    assert [n.text() for n in nodes if n.tag == "h1"] == ["restorekit"]
    assert len([n for n in nodes if n.tag == "main"]) == 1
    # Headings go down one level at a time (h1, then h2s).
    assert sorted({int(n.tag[1]) for n in nodes if re.fullmatch(r"h[1-6]", n.tag)}) == [1, 2]
    # No positive tabindex (it would reorder the keyboard's path through the page).
    assert not [n.attrs for n in nodes if int(n.attrs.get("tabindex", "0") or 0) > 0]


def test_every_control_has_a_name_and_every_reference_resolves() -> None:
    root = parse_page()
    ids = by_id(root)
    controls = [n for n in root.walk() if n.tag in ("input", "select", "textarea", "button")]
    assert len(controls) >= 12
    for c in controls:
        assert accessible_name(c, root).strip(), f"no accessible name: <{c.tag} {c.attrs}>"
    for n in root.walk():
        for attr in ("aria-labelledby", "aria-describedby", "for"):
            for ref in n.attrs.get(attr, "").split():
                assert ref in ids, f"<{n.tag} {attr}={ref!r}> names no element"
    # Hints that were only tooltips (title) are text on the page, tied to their controls.
    for name in ("seed", "samples"):
        assert "title" not in ids[name].attrs and "title" not in ids[name].parent.attrs  # type: ignore[union-attr]
        assert ids[ids[name].attrs["aria-describedby"]].text() == "seed and samples are for stochastic methods"


def test_the_file_control_is_a_real_input_the_keyboard_reaches() -> None:
    root = parse_page()
    file = by_id(root)["file"]
    assert (file.tag, file.attrs.get("type")) == ("input", "file")
    assert "hidden" not in file.attrs and "disabled" not in file.attrs and file.attrs.get("tabindex", "0") != "-1"
    assert accessible_name(file, root) == "choose a file"
    rules = css_rules()
    for sel, decls in rules:
        # Hidden from sight only: display or visibility would take it out of the Tab order.
        if "#file" in [part.strip() for part in sel.split(",")]:
            assert decls.get("display") != "none" and decls.get("visibility") != "hidden", decls
    # Its label (what is seen) shows the focus the invisible input holds.
    label = next(a for a in file.ancestors() if a.tag == "label")
    classes = label.attrs["class"].split()
    focus = [d for s, d in rules for part in s.split(",")
             if any(part.strip() == f".{c}:focus-within" for c in classes)]
    assert focus and outline_colour(focus[0]) is not None, "the file control's label shows no focus"


def test_status_errors_progress_and_groups_are_exposed() -> None:
    root = parse_page()
    ids = by_id(root)
    announce = next(n for n in root.walk() if n.attrs.get("role") == "status")
    # The status region is in the page from the start (not hidden): text put in it later is read.
    assert "hidden" not in announce.attrs and not any("hidden" in a.attrs for a in announce.ancestors())
    assert announce.attrs.get("aria-live", "polite") == "polite" and not announce.text()
    assert ids["error"].attrs.get("role") == "alert"
    assert accessible_name(ids["bar"], root) == "job progress" and ids["bar"].attrs["aria-describedby"] == "stage"
    # Groups: the methods' checkboxes (added by the script) and the radios, each with a name.
    methods = ids["methods"]
    assert methods.attrs.get("role") == "group" and ids[methods.attrs["aria-labelledby"]].text() == "2. Methods"
    radios = [n for n in root.walk() if n.tag == "input" and n.attrs.get("type") == "radio"]
    assert radios and all(any(a.tag == "fieldset" for a in r.ancestors()) for r in radios)
    assert [c.text() for c in ids["faces"].children if isinstance(c, Node) and c.tag == "legend"] == ["the image is"]
    # Restore starts disabled (a real disabled button, not a look) and says why next to it.
    run = ids["run"]
    assert "disabled" in run.attrs and ids[run.attrs["aria-describedby"]].tag == "span"
    cancel = ids["cancel"]
    assert (cancel.tag, cancel.attrs.get("type")) == ("button", "button") and "tabindex" not in cancel.attrs


# ------------------------------------------------------------------------------------------ the CSS


def css_rules(text: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """(selector, declarations) of every rule, at-rule blocks (@media) included, comments removed."""
    if text is None:
        text = (PAGE / "style.css").read_text(encoding="utf-8")
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    rules: list[tuple[str, dict[str, str]]] = []
    for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        sel = " ".join(sel.split())
        sel = re.sub(r"^@media[^{]*$", "", sel)  # "@media (...) { *, ... {": the inner selector follows
        decls: dict[str, str] = {}
        for decl in body.split(";"):
            if ":" in decl:
                k, v = decl.split(":", 1)
                decls[k.strip()] = v.strip()
        rules.append((sel, decls))
    return rules


def variables() -> dict[str, str]:
    return {k: v for sel, d in css_rules() if sel == ":root" for k, v in d.items() if k.startswith("--")}


def colour(value: str) -> tuple[float, float, float]:
    """A CSS colour (hex, or var(--x) of one) as sRGB in [0, 1]; anything else fails the test by name."""
    value = value.replace("!important", "").strip()
    var = re.fullmatch(r"var\((--[\w-]+)\)", value)
    if var:
        value = variables()[var.group(1)]
    named = {"white": "#ffffff", "black": "#000000"}
    value = named.get(value, value)
    m = re.fullmatch(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})", value)
    assert m, f"style.css: colour {value!r} is not one this test reads (give it as #rrggbb)"
    h = m.group(1) if len(m.group(1)) == 6 else "".join(c * 2 for c in m.group(1))
    return tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def luminance(rgb: tuple[float, float, float]) -> float:
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def background(decls: dict[str, str]) -> str | None:
    return decls.get("background-color") or decls.get("background")


def outline_colour(decls: dict[str, str]) -> tuple[float, float, float] | None:
    """The colour of a visible outline (width > 0, style not none), or None."""
    value = decls.get("outline", "")
    if not value or re.search(r"\bnone\b|^0(px)?$", value):
        return None
    width = re.search(r"(\d*\.?\d+)px", value)
    if width is None or float(width.group(1)) < 2:
        return None
    return colour(next(p for p in value.split() if p.startswith(("#", "var("))))


def surfaces() -> dict[str, tuple[float, float, float]]:
    """Every background text may sit on: the page's, and each box's that does not set its own text colour."""
    out = {}
    for sel, d in css_rules():
        bg = background(d)
        if bg and ("color" not in d or sel in ("body", "html", ":root")):
            out[f"{sel} {bg}"] = colour(bg)
    return out


def test_the_contrast_of_the_palette_the_stylesheet_sets_is_known() -> None:
    """The parser and the formula on known numbers (WCAG's own examples: black on white is 21:1)."""
    assert contrast(colour("#000"), colour("#fff")) == pytest.approx(21.0)
    assert contrast(colour("#777777"), colour("#ffffff")) == pytest.approx(4.48, abs=0.01)
    assert contrast(colour("#68717c"), colour("#eef4ff")) < 4.5  # the old muted grey on the drop zone
    assert set(surfaces().values()) >= {colour("#fff"), colour("#f6f7f9"), colour("#eef4ff")}


def test_text_keeps_4_5_to_1_and_controls_and_focus_3_to_1_on_every_background() -> None:
    bad = []
    backgrounds = surfaces()
    for sel, d in css_rules():
        if "color" not in d:
            continue
        fg = colour(d["color"])
        # A box that sets its own background is read against that (and only that) background; the
        # page's own text colour is inherited by every box.
        own = background(d) if sel not in ("body", "html", ":root") else None
        against = {f"{sel} {own}": colour(own)} if own else backgrounds
        bad += [f"{sel}: text on {name} is {contrast(fg, bg):.2f}:1" for name, bg in against.items()
                if contrast(fg, bg) < 4.5]
    for sel, d in css_rules():
        edges = [("border", d.get("border", "")), ("outline", d.get("outline", ""))]
        for kind, value in edges:
            if kind == "outline" and outline_colour(d) is None:
                continue
            if kind == "border" and not re.search(r"\bbutton\b|\.button", sel):
                continue  # panel and table rules are decoration; a button's edge shows what it is
            col = next((p for p in value.split() if p.startswith(("#", "var("))), None)
            if col is None:
                continue
            bad += [f"{sel}: {kind} on {name} is {contrast(colour(col), bg):.2f}:1"
                    for name, bg in backgrounds.items() if contrast(colour(col), bg) < 3.0]
    assert not bad, bad


def test_focus_is_always_visible_and_motion_can_be_reduced() -> None:
    rules = css_rules()
    focus = [d for s, d in rules if ":focus-visible" in s and "outline" in d]
    assert focus and all(outline_colour(d) is not None for d in focus)
    for sel, d in rules:  # no rule takes the focus ring away
        assert not re.fullmatch(r"none|0(px)?", d.get("outline", "x")), sel
    css = re.sub(r"/\*.*?\*/", "", (PAGE / "style.css").read_text(encoding="utf-8"), flags=re.S)
    moving = re.search(r"\b(animation|transition)\s*:\s*(?!none)", css)
    if moving:
        reduce = re.search(r"@media\s*\(\s*prefers-reduced-motion:\s*reduce\s*\)\s*\{(.*?\}\s*)\}", css, re.S)
        assert reduce and "animation: none" in reduce.group(1) and "transition: none" in reduce.group(1)
    # The best of a column is not told by weight alone: it is marked, with a spoken alternative.
    best = [d for s, d in rules if s == "td.best::after"]
    assert best and re.fullmatch(r'"\s*★"\s*/\s*"\s*\(best\)"', best[0]["content"]), best


# ------------------------------------------------------------------------------------------ a browser


def test_a_keyboard_alone_restores_a_face_and_the_status_region_says_it_is_done(tmp_path: Path) -> None:
    pytest.importorskip("starlette", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    pytest.importorskip("uvicorn", reason="restorekit serve needs the web extra (starlette, uvicorn)")
    from serve_helpers import chromium_driver, find_chromium, generated_face, request

    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from restorekit.web.config import ServeConfig
    from restorekit.web.server import start

    face = tmp_path / "face.png"
    generated_face(64).save(face)
    srv = start(ServeConfig(port=0, device="cpu", methods=["bicubic"], metrics=["psnr_y_crop"],
                            temp_parent=tmp_path))
    driver: Any = None
    try:
        status, _, html = request(srv.url, "GET", "/")
        assert status == 200 and html.decode() == (PAGE / "index.html").read_text(encoding="utf-8")
        driver = chromium_driver(*found, profile=tmp_path / "profile")

        def wait(js: str, timeout: float = 20) -> Any:
            return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
                lambda d: d.execute_script(f"return {js};"))

        def tab(key: str = Keys.TAB) -> str:
            ActionChains(driver).send_keys(key).perform()
            return driver.execute_script("return document.activeElement.id")

        def ring(js_element: str) -> str:  # the outline the user sees around it
            return driver.execute_script(f"const s = getComputedStyle({js_element}); "
                                         "return s.outlineStyle + ' ' + s.outlineWidth;")

        driver.get(srv.url + "/")
        wait("document.querySelectorAll('#methods .method').length > 0")
        assert driver.execute_script("return document.getElementById('run-why').textContent") == "choose an image first"
        assert tab() == "file"  # the first stop on the page
        assert ring("document.getElementById('file').closest('label')") == "solid 3px"
        driver.switch_to.active_element.send_keys(str(face))
        wait("!document.getElementById('run').disabled")
        wait("document.getElementById('announce').textContent === 'face.png: 64×64 px, ready'")
        seen = []
        for _ in range(20):
            seen.append(tab())
            assert ring("document.activeElement") == "solid 3px", seen
            if seen[-1] == "run":
                break
        assert seen[-1] == "run" and "m-bicubic" in seen and "scale" in seen, seen
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        said = wait("/^restore /.test(document.getElementById('announce').textContent) && "
                    "document.getElementById('announce').textContent")
        assert said == "restore done: bicubic finished; the results are below"
        # The focus came back to Restore (not lost to the page) and the output says what it is.
        assert driver.execute_script("return document.activeElement.id") == "run"
        alt = driver.execute_script("return document.querySelector('img[data-role=output]').alt")
        assert alt == "bicubic output, restored ×4: 256×256 px"
        assert driver.execute_script("return [...document.querySelectorAll('#results a.download')]"
                                     ".map(a => a.getAttribute('aria-label'))") == [
            "download face_lr_x4.png", "download face_x4_bicubic.png"]
    finally:
        if driver is not None:
            driver.quit()
        srv.stop()
