"""Reading the generated index.html back (stdlib HTML parser)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class PageParser(HTMLParser):
    """Every start tag with its attributes, and the agent named in each row of the agents table."""

    def __init__(self) -> None:
        super().__init__()
        self.agents: list[str] = []
        self._in_body = False
        self._cell = -1
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._cell = -1
        elif tag == "td" and self._in_body:
            self._cell += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._in_body and self._cell == 0 and data.strip():
            self.agents.append(data.strip())
            self._cell = 99


def table_agents(index: Path) -> list[str]:
    parser = PageParser()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser.agents


class _Rows(HTMLParser):
    """The text of each cell of each body row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_body = False
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append([])
        elif self._in_body and tag == "td":
            self.rows[-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_body and self._in_cell:
            self.rows[-1][-1] += data


def table_rows(index: Path) -> dict[str, list[str]]:
    """Agent name -> the text of every cell of its row (whitespace collapsed)."""
    parser = _Rows()
    parser.feed(index.read_text(encoding="utf-8"))
    return {row[0]: [" ".join(cell.split()) for cell in row] for row in parser.rows}
