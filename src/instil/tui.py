"""`instil review`: the review queue in the terminal, on Textual (Textualize's TUI framework, by the makers of rich,
which instil already renders with; maintained, with a headless test harness).

    instil review --spec instil.yaml --by ana    # groups on the left, the item on the right; keys in the footer

Each item shows what was asked, the answer, why it is here (the graders' reasons, the user's comment) and the answer
on offer (the shadow's, the user's correction, a reference). Keys: ``a`` accept the answer, ``s`` take the answer on
offer, ``c`` correct it (an editor opens; ``ctrl+s`` saves, ``escape`` cancels), ``d`` discard, ``n``/``p`` next and
previous item, ``g`` whole group: the next decision applies to every open item of the group (look at a few first).
Every decision is recorded at once, with who and when (:func:`instil.review.decide`); ``q`` quits.

:class:`ReviewSession` holds the state and does the deciding, so the app is only keys and panes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from instil import review
from instil.errors import DependencyError
from instil.review import Group
from instil.spec import JobSpec
from instil.store import ReviewItem, Store

__all__ = ["ReviewSession", "run_review"]


@dataclass
class ReviewSession:
    """The queue as a reviewer walks it: groups, the item in view, and the whole-group switch."""

    spec: JobSpec
    store: Store
    by: str
    groups: list[Group]
    group: int = 0
    position: int = 0
    whole_group: bool = False
    decided: int = field(default=0)

    @classmethod
    def open(cls, spec: JobSpec, store: Store, by: str) -> ReviewSession:
        review.collect(spec, store)
        return cls(spec, store, by, review.groups(spec, store))

    @property
    def current_group(self) -> Group | None:
        return self.groups[self.group] if self.groups else None

    @property
    def item(self) -> ReviewItem | None:
        g = self.current_group
        if g is None or not g.items:
            return None
        return g.items[min(self.position, len(g.items) - 1)]

    def select(self, group: int) -> None:
        if 0 <= group < len(self.groups):
            self.group, self.position, self.whole_group = group, 0, False

    def move(self, step: int) -> None:
        g = self.current_group
        if g is not None and g.items:
            self.position = (self.position + step) % len(g.items)

    def decide(self, action: str, correction: str | None = None) -> list[ReviewItem]:
        """Decide the item in view (or, with the whole-group switch on, every open item of its group): ``accept``,
        ``correct`` (with ``correction``), ``take`` (each its own answer on offer), ``discard``; the decided items
        leave the group and the next open one comes into view."""
        g, it = self.current_group, self.item
        if g is None or it is None:
            return []
        targets = [i for i in g.items if i.status == "open"] if self.whole_group else [it]
        ids = [i.id for i in targets if i.id is not None]
        if action == "take":  # each item's own answer on offer (a shadow's, a user's), never one copied to all
            offers = {i.id: i.suggestion for i in targets if i.id is not None and i.suggestion is not None}
            done = review.correct_each(self.spec, self.store, offers, by=self.by)
        else:
            done = review.decide(self.spec, self.store, ids, action, by=self.by, correction=correction)
        decided = {i.id for i in done}
        self.decided += len(done)
        remaining = [i for i in g.items if i.id not in decided]
        self.groups[self.group] = Group(g.label, remaining)
        self.whole_group = False
        if not remaining:
            del self.groups[self.group]
            self.group, self.position = min(self.group, max(len(self.groups) - 1, 0)), 0
        else:
            self.position = min(self.position, len(remaining) - 1)
        return done

    def describe(self) -> str:
        """The item in view, as text (rich markup escaped by the caller)."""
        it = self.item
        if it is None:
            return "Nothing to review: the queue is empty."
        lines = [f"#{it.id}  {it.kind}" + (f"  (version {it.version})" if it.version is not None else "")]
        if it.trace_id:
            lines.append(f"trace {it.trace_id}" + (f" / shadow {it.other_trace_id}" if it.other_trace_id else ""))
        lines.append("")
        for m in it.messages:
            content = m.get("content")
            lines.append(f"{m.get('role', '?')}: {content if isinstance(content, str) else json.dumps(content)}")
        lines += ["", "answer:", it.output if it.output is not None else json.dumps(it.tool_calls)]
        if it.reason:
            lines += ["", f"why: {it.reason}"]
        if it.rating is not None:
            lines.append(f"rating: {it.rating:g}")
        if it.suggestion is not None:
            lines += ["", "on offer:", it.suggestion]
        return "\n".join(lines)

    def status_line(self) -> str:
        g = self.current_group
        if g is None:
            return f"{self.decided} decided; nothing left"
        where = f"item {self.position + 1} of {len(g.items)} in group {self.group + 1} of {len(self.groups)}"
        mode = "  [WHOLE GROUP: the next decision applies to all]" if self.whole_group else ""
        return f"{where}; {self.decided} decided by {self.by}{mode}"


def run_review(spec: JobSpec, store: Store, by: str) -> int:
    """Run the terminal UI until the reviewer quits; returns how many items were decided."""
    app = review_app(ReviewSession.open(spec, store, by))
    app.run()
    return app.session.decided


def review_app(session: ReviewSession) -> Any:
    """The Textual app over ``session`` (defined here: textual is an optional extra, imported on use)."""
    try:
        from rich.markup import escape
        from textual.app import App, ComposeResult
        from textual.binding import Binding
        from textual.containers import Horizontal, VerticalScroll
        from textual.widgets import Footer, Header, Label, ListItem, ListView, Static, TextArea
    except ImportError:
        raise DependencyError("`instil review` needs textual", hint="pip install 'instil[review]'") from None

    class ReviewApp(App):
        TITLE = "instil review"
        CSS = """
        #groups { width: 40%; }
        #pane { width: 60%; padding: 0 1; }
        #edit { height: 10; display: none; }
        #edit.editing { display: block; }
        """
        BINDINGS = [
            Binding("a", "decide('accept')", "accept"),
            Binding("s", "take", "take offer"),
            Binding("c", "correct", "correct"),
            Binding("d", "decide('discard')", "discard"),
            Binding("n", "move(1)", "next"),
            Binding("p", "move(-1)", "prev"),
            Binding("g", "whole_group", "whole group"),
            Binding("ctrl+s", "save", "save", show=False, priority=True),  # before the editor takes the key
            Binding("escape", "cancel", "cancel", show=False, priority=True),
            Binding("q", "quit", "quit"),
        ]

        def __init__(self) -> None:
            super().__init__()
            self.session = session

        def compose(self) -> ComposeResult:
            yield Header()
            with Horizontal():
                yield ListView(id="groups")
                with VerticalScroll(id="pane"):
                    yield Static(id="status")
                    yield Static(id="item")
                    yield TextArea(id="edit")
            yield Footer()

        def on_mount(self) -> None:
            self.sub_title = f"{session.spec.name}: decisions by {session.by}"
            self.refresh_view(groups=True)

        def refresh_view(self, groups: bool = False) -> None:
            if groups:
                view = self.query_one("#groups", ListView)
                view.clear()
                for g in session.groups:
                    view.append(ListItem(Label(escape(f"{len(g.items):>4}  {g.label}"))))
                if session.groups:
                    view.index = session.group
            self.query_one("#status", Static).update(escape(session.status_line()))
            self.query_one("#item", Static).update(escape(session.describe()))

        def on_list_view_highlighted(self, event: ListView.Highlighted) -> None:
            index = event.list_view.index
            if index is not None and index != session.group:
                session.select(index)
                self.refresh_view()

        def editing(self) -> bool:
            return self.query_one("#edit", TextArea).has_class("editing")

        def action_decide(self, action: str, correction: str | None = None) -> None:
            if self.editing():
                return
            session.decide(action, correction)
            self.refresh_view(groups=True)  # counts and labels change

        def action_take(self) -> None:
            if not self.editing():
                self.action_decide("take")

        def action_correct(self) -> None:
            it = session.item
            if it is None:
                return
            edit = self.query_one("#edit", TextArea)
            edit.load_text(it.suggestion if it.suggestion is not None else (it.output or ""))
            edit.add_class("editing")
            edit.focus()

        def action_save(self) -> None:
            edit = self.query_one("#edit", TextArea)
            if not self.editing():
                return
            text = edit.text
            edit.remove_class("editing")
            if text.strip():
                self.action_decide("correct", text)
            self.query_one("#groups", ListView).focus()

        def action_cancel(self) -> None:
            edit = self.query_one("#edit", TextArea)
            edit.remove_class("editing")
            self.query_one("#groups", ListView).focus()

        def action_move(self, step: int) -> None:
            if not self.editing():
                session.move(step)
                self.refresh_view()

        def action_whole_group(self) -> None:
            if not self.editing():
                session.whole_group = not session.whole_group
                self.refresh_view()

    return ReviewApp()
