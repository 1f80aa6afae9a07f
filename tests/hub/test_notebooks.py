"""Workspace operations on a server's notebooks: which files the hub writes, how, and when it says so."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from jupyter_server.services.contents.manager import ContentsManager
from tornado import web

from spindel_jupyter.demo import code_notebook as notebook
from spindel_jupyter.hub import durable
from spindel_jupyter.hub.access import Actor, Forbidden
from spindel_jupyter.hub.notebooks import NotebookService
from spindel_jupyter.hub.store import NodeStore
from spindel_jupyter.hub.workspaces import Registry

OWNER = Actor("teacher", "own", "maria")


class MemoryContents(ContentsManager):
    """A contents manager that keeps notebooks in memory, as a database-backed one would."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files: dict[str, dict[str, Any]] = {}
        self.dirs: set[str] = {""}

    def get(self, path: str, content: bool = True, type: Any = None, format: Any = None, **kw: Any) -> Any:
        if path not in self.files:
            raise web.HTTPError(404, f"no file {path}")
        return {"type": "notebook", "path": path, "content": self.files[path] if content else None}

    def save(self, model: dict[str, Any], path: str) -> dict[str, Any]:
        parent = path.rpartition("/")[0]
        if parent not in self.dirs:
            raise web.HTTPError(404, f"no directory {parent}")
        if model["type"] == "directory":
            self.dirs.add(path)
        else:
            self.files[path] = json.loads(json.dumps(model["content"]))
        return {"path": path, "type": model["type"]}

    def file_exists(self, path: str = "") -> bool:
        return path in self.files

    def dir_exists(self, path: str) -> bool:
        return path in self.dirs

    def is_hidden(self, path: str) -> bool:
        return False

    def delete_file(self, path: str) -> None:
        self.files.pop(path, None)

    def rename_file(self, old_path: str, new_path: str) -> None:
        self.files[new_path] = self.files.pop(old_path)


def service(tmp_path: Path, contents: Any) -> NotebookService:
    registry = Registry(tmp_path / "ws", NodeStore(tmp_path / "nodes"))
    notebooks = NotebookService(registry, contents, str(tmp_path / "root"))
    registry.on_head = notebooks.head_moved
    return notebooks


def sources(content: dict[str, Any]) -> list[str]:
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in content["cells"]]


def test_a_contents_manager_that_is_not_a_file_system_is_written_through(tmp_path: Path) -> None:
    contents = MemoryContents()
    contents.files["lecture.ipynb"] = notebook("a = 1")
    notebooks = service(tmp_path, contents)

    async def scenario() -> None:
        await notebooks.publish(OWNER, "lecture", path="lecture.ipynb")
        await notebooks.follow(OWNER, "lecture")
        await notebooks.fork(OWNER, "lecture", "lecture-b")

    asyncio.run(scenario())
    assert sources(contents.files["following/lecture.ipynb"]) == ["a = 1"]
    assert sources(contents.files["forks/lecture-b.ipynb"]) == ["a = 1"]
    assert {"following", "forks"} <= contents.dirs
    assert not (tmp_path / "root").exists()  # nothing went around the contents manager


@pytest.fixture
def on_disk(tmp_path: Path) -> NotebookService:
    root = tmp_path / "root"
    root.mkdir()
    (root / "lecture.ipynb").write_text(json.dumps(notebook("a = 1")))
    return service(tmp_path, FileContentsManager(root_dir=str(root)))


def test_the_hub_writes_only_new_files_or_its_own_copies_of_that_workspace(
    on_disk: NotebookService, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    victim = root / "victim.ipynb"
    victim.write_text('{"mine": true}')

    async def scenario() -> None:
        await on_disk.publish(OWNER, "lecture", path="lecture.ipynb")
        await on_disk.publish(OWNER, "other", notebook=notebook("z = 0"))
        for attempt in (
            on_disk.follow(OWNER, "lecture", path="victim.ipynb"),
            on_disk.fork(OWNER, "lecture", "lecture-v", path="victim.ipynb"),
        ):
            with pytest.raises(Forbidden, match=r"victim.ipynb already exists .* --into"):
                await attempt
        await on_disk.follow(OWNER, "lecture", path="copy.ipynb")
        await on_disk.follow(Actor("bob", "own", "maria"), "lecture", path="copy.ipynb")  # its copy: again
        with pytest.raises(Forbidden, match=r"copy.ipynb already exists and is not a copy the hub keeps for"):
            await on_disk.follow(OWNER, "other", path="copy.ipynb")  # another workspace's copy
        with pytest.raises(Forbidden, match="outside the server's root"):
            await on_disk.follow(OWNER, "lecture", path="../escape.ipynb")

    asyncio.run(scenario())
    assert victim.read_text() == '{"mine": true}'
    assert "lecture-v" not in on_disk.registry.workspaces
    assert sources(json.loads((root / "copy.ipynb").read_text())) == ["a = 1"]
    assert not (tmp_path / "escape.ipynb").exists()


def test_a_new_head_is_announced_once_its_copies_are_written_and_never_goes_back(
    on_disk: NotebookService, tmp_path: Path
) -> None:
    copy = tmp_path / "root" / "following" / "lecture.ipynb"
    announced: list[tuple[str, str]] = []

    def announce(descriptor: dict[str, Any], content: dict[str, Any]) -> None:
        on_file = json.loads(copy.read_text())["metadata"]["spindel"]["head"]
        announced.append((descriptor["head"], on_file))

    on_disk.announce = announce

    async def scenario() -> list[str]:
        await on_disk.publish(OWNER, "lecture", path="lecture.ipynb")
        await on_disk.follow(OWNER, "lecture")
        heads = []
        for i in range(5):  # heads faster than copies are written
            descriptor = await on_disk.publish(OWNER, "lecture", notebook=notebook(f"a = {i}"))
            heads.append(descriptor["head"])
        while on_disk._tasks:
            await asyncio.sleep(0.01)
        return heads

    heads = asyncio.run(scenario())
    assert announced and all(head == on_file for head, on_file in announced)
    assert announced[-1][0] == heads[-1]
    assert [heads.index(h) for h, _ in announced] == sorted(heads.index(h) for h, _ in announced)
    assert sources(json.loads(copy.read_text())) == ["a = 4"]


def test_copies_the_hub_writes_or_sends_name_a_kernel_to_open_with(
    on_disk: NotebookService, tmp_path: Path
) -> None:
    on_disk.kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

    async def scenario() -> dict[str, Any]:
        await on_disk.publish(OWNER, "lecture", path="lecture.ipynb")  # its metadata names no kernel
        await on_disk.fork(OWNER, "lecture", "lecture-b")
        await on_disk.follow(OWNER, "lecture")
        return await on_disk.fork(OWNER, "lecture", "lecture-c", deliver=True)

    delivered = asyncio.run(scenario())
    root = tmp_path / "root"
    for path in ("forks/lecture-b.ipynb", "following/lecture.ipynb"):
        assert json.loads((root / path).read_text())["metadata"]["kernelspec"]["name"] == "python3", path
    assert delivered["notebook"]["metadata"]["kernelspec"]["name"] == "python3"


def test_a_publish_writes_its_cells_off_the_event_loop_and_its_commit_on_it(
    on_disk: NotebookService, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[tuple[str, bool]] = []
    write = durable.Batch.write

    def recording(batch: durable.Batch, path: Path, data: bytes) -> None:
        threads.append((path.parent.parent.name, threading.current_thread() is threading.main_thread()))
        write(batch, path, data)

    monkeypatch.setattr(durable.Batch, "write", recording)
    asyncio.run(on_disk.publish(OWNER, "big", notebook=notebook(*(f"x{i} = {i}" for i in range(20)))))
    nodes = [main for name, main in threads if name == "nodes"]
    assert nodes.count(False) == 20 and nodes.count(True) == 1  # the cells elsewhere, the commit on the loop


def test_a_fork_that_does_not_wait_answers_before_reading_its_notebook(
    on_disk: NotebookService, tmp_path: Path
) -> None:
    """A fork costs the same whatever the notebook's size: its file comes after the answer."""
    reads: list[str] = []
    notebook_of = on_disk.registry.notebook

    def counted(head: str) -> dict[str, Any]:
        reads.append(head)
        return notebook_of(head)

    async def scenario() -> int:
        await on_disk.publish(OWNER, "lecture", path="lecture.ipynb")
        on_disk.registry.notebook = counted  # type: ignore[method-assign]
        await on_disk.fork(OWNER, "lecture", "lecture-b", wait=False)
        answered_after = len(reads)
        while on_disk._tasks:
            await asyncio.sleep(0.01)
        return answered_after

    assert asyncio.run(scenario()) == 0 and len(reads) == 1
    assert (tmp_path / "root" / "forks" / "lecture-b.ipynb").exists()
