"""Which requests take the hub's hot route (``POST /tasks/{name}/invoke`` before aiohttp's router).

What the two paths answer is compared against a real server in
``tests/integration/test_invoke.py``; here, only the choice.
"""
from __future__ import annotations

import pytest

from engine.http.app import invoked_task
from engine.manifest import NAME_RE


@pytest.mark.parametrize("method, raw_path, task", [
    ("POST", "/tasks/echo/invoke", "echo"),
    ("POST", "/tasks/echo/invoke?mode=async&priority=3", "echo"),
    ("POST", "/tasks/a_b-9/invoke", "a_b-9"),
    ("GET", "/tasks/echo/invoke", None),         # the router answers 405
    ("PUT", "/tasks/echo/invoke", None),
    ("POST", "/tasks//invoke", None),            # no name: the router answers 404
    ("POST", "/tasks/%65cho/invoke", None),      # percent-encoded: the router decodes it
    ("POST", "/tasks/Echo/invoke", None),        # not a task name: the router answers
    ("POST", "/tasks/a/b/invoke", None),
    ("POST", "/tasks/echo/invoke/", None),
    ("POST", "/tasks/echo", None),
    ("POST", "/events/tasks/echo/invoke", None),
])
def test_only_plain_invoke_posts_take_the_hot_route(method: str, raw_path: str, task: str | None) -> None:
    assert invoked_task(method, raw_path) == task


@pytest.mark.parametrize("name", ["echo", "a", "0-_", "x" * 63])
def test_every_valid_task_name_takes_it(name: str) -> None:
    assert NAME_RE.fullmatch(name)
    assert invoked_task("POST", f"/tasks/{name}/invoke") == name
