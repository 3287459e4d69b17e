"""
Sphinx directives that render tables from the code, so the docs cannot drift from it.

``policy-losses``: TrustPPO's policy-loss registry (``sb3_trust.ppo.losses.POLICY_LOSSES``), one row per entry:
its name, the keywords it reads from the model, whether it needs the exact KL, its formula, its function, and
whether the accelerator implements it.

``projections``: TrustPPO's trust-region projections (``sb3_trust.common.projections.PROJECTIONS``), one row per
entry: its name, its mean and covariance distances, its solution, and its covariance projection function.

Included pages (``benchmarks/*.md``, through MyST's ``include``): their relative links are rewritten when read, a link
to another included page to that page of the site, a link to a file (a plot) to that file, so they resolve from
``docs/``. The mapping is ``sb3_trust_included_pages`` in ``conf.py`` (repository path -> docname).
"""

import os
import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx import addnodes
from sphinx.application import Sphinx


def _table(header: list[str], rows: list[list[nodes.Node]], widths: list[int]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for title in header:
        row += nodes.entry("", nodes.paragraph(text=title))
    head += row
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            row += nodes.entry("", nodes.paragraph("", "", cell))
        body += row
    return table


def _code(text: str) -> nodes.Node:
    return nodes.literal(text=text) if text else nodes.Text("")


def _function_link(target: str) -> nodes.Node:
    """A cross-reference to the function's API entry (a missing entry is a warning, so an error in ``make docs``)."""
    ref = addnodes.pending_xref("", refdomain="py", reftype="func", reftarget=target, refexplicit=False, refwarn=True)
    ref += nodes.literal(text=target.rsplit(".", 1)[-1] + "()", classes=["xref", "py", "py-func"])
    return ref


class PolicyLossesDirective(Directive):
    """The registry's table: ``POLICY_LOSSES`` as it is at build time."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from sb3_trust.accel import ACCELERATED_LOSSES
        from sb3_trust.ppo.losses import POLICY_LOSSES

        rows = []
        for name, entry in POLICY_LOSSES.items():
            function = f"{entry.fn.__module__}.{entry.fn.__qualname__}"
            rows.append(
                [
                    _code(f'policy_loss="{name}"'),
                    _code(", ".join(entry.keywords)) if entry.keywords else nodes.Text("-"),
                    nodes.Text("yes" if entry.needs_kl else "no"),
                    _code(entry.formula),
                    _function_link(function),
                    nodes.Text("yes" if name in ACCELERATED_LOSSES else "no (reference path)"),
                ]
            )
        header = ["policy_loss", "keywords (model attributes)", "needs kl", "loss", "function", "accelerated"]
        return [_table(header, rows, [16, 16, 8, 30, 30, 12])]


class ProjectionsDirective(Directive):
    """The projections' table: ``PROJECTIONS`` as it is at build time."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from sb3_trust.common.projections import PROJECTIONS

        rows = []
        for name, entry in PROJECTIONS.items():
            mean = "M" if entry.mean_scale == 1 else f"{entry.mean_scale:g}·M"
            rows.append(
                [
                    _code(f'projection="{name}"'),
                    _code(mean),
                    _function_link(f"{entry.cov_distance.__module__}.{entry.cov_distance.__qualname__}"),
                    _code(entry.formula),
                    _function_link(f"{entry.cov_projection.__module__}.{entry.cov_projection.__qualname__}"),
                ]
            )
        header = ["projection", "mean distance", "covariance distance", "solution", "covariance projection"]
        return [_table(header, rows, [14, 10, 22, 40, 26])]


# A Markdown link's target, unless it is a URL or an anchor in the same page
_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def rewrite_included_links(app: Sphinx, relative_path: Path, parent_docname: str, content: list[str]) -> None:
    """``include-read``: make the included file's relative links resolve from the including document."""
    srcdir = Path(app.srcdir).resolve()
    included = (srcdir / relative_path).resolve()
    if included.parent == srcdir:
        return
    root = srcdir.parent
    pages = app.config.sb3_trust_included_pages
    parent_dir = (srcdir / parent_docname).parent

    def rewrite(match: re.Match[str]) -> str:
        target, hash_, anchor = match.group(1).partition("#")
        path = (included.parent / target).resolve()
        if not path.is_file():
            return match.group(0)  # left as is: MyST warns, so the build fails
        key = path.relative_to(root).as_posix() if path.is_relative_to(root) else None
        if key in pages:
            return f"](project:/{pages[key]}.md{hash_}{anchor})"
        return f"](path:{os.path.relpath(path, parent_dir)})"

    content[0] = _LINK.sub(rewrite, content[0])


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("policy-losses", PolicyLossesDirective)
    app.add_directive("projections", ProjectionsDirective)
    app.add_config_value("sb3_trust_included_pages", {}, "env")
    app.connect("include-read", rewrite_included_links)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
