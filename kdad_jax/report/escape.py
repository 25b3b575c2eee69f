"""Names from the user's file tree (categories, defect types, file paths) as text for Markdown
and CSV files, where they would otherwise be markup or formulas.

A category folder called ``<img src=x onerror=alert(1)>`` must show as that text in a Markdown
viewer that passes HTML through, and ``=HYPERLINK(...)`` must not run in the spreadsheet that
opens ``results.csv``. Python's ``html`` and ``csv`` modules quote but do not neutralize these;
no PyPI package does both in a few lines, so they are here.
"""

_HTML = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;"}
_MARKDOWN = set("\\`*[]|#~")  # punctuation that starts Markdown syntax; escaped with "\"
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def markdown(text: str) -> str:
    """``text`` as literal Markdown inline text (a table cell too): HTML characters as entities,
    Markdown punctuation backslash-escaped, ``_`` too where it could start emphasis (not inside
    ``metal_nut``), line breaks as spaces."""
    text = " ".join(str(text).splitlines())
    out = []
    for i, c in enumerate(text):
        if c in _HTML:
            out.append(_HTML[c])
        elif c in _MARKDOWN:
            out.append("\\" + c)
        elif c == "_" and not (0 < i < len(text) - 1 and text[i - 1].isalnum()
                               and text[i + 1].isalnum()):
            out.append("\\_")
        else:
            out.append(c)
    return "".join(out)


def csv_cell(text: str) -> str:
    """``text`` for a CSV cell: one that a spreadsheet would evaluate as a formula starts with
    ``'`` (OWASP's rule); anything else is unchanged (the csv module does the quoting)."""
    text = str(text)
    return "'" + text if text.startswith(_FORMULA) else text

