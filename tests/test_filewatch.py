"""What the policy, keys and certificate watchers share: file marks and settling."""

from __future__ import annotations

import os
from pathlib import Path

from gatehouse.filewatch import Settle, stat_mark


class TestSettle:
    def test_a_change_counts_once_when_two_polls_agree(self) -> None:
        """A signature still moving is not loaded; the first repeat is, once."""
        settle = Settle("v1")
        assert [settle.changed(s) for s in ("v1", "v2", "v3", "v3", "v3")] == \
            [False, False, False, True, False]
        assert settle.seen == "v3"

    def test_a_change_undone_before_it_settles_is_ignored(self) -> None:
        """Back to what was loaded before the second poll: nothing to load."""
        settle = Settle("v1")
        assert not settle.changed("v2")
        assert not settle.changed("v1")
        assert not settle.changed("v2")  # a fresh start, not the earlier sighting
        assert settle.changed("v2")


class TestStatMark:
    def test_a_file_replaced_by_rename_gets_a_new_mark(self, tmp_path: Path) -> None:
        """Same size and modification time, new inode: a different version."""
        path, other = tmp_path / "keys.yaml", tmp_path / "keys.yaml.new"
        path.write_text("keys: []\n")
        other.write_text("keys: []\n")
        stat = path.stat()
        os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        before = stat_mark(path)
        other.replace(path)
        assert before is not None and stat_mark(path) not in (None, before)

    def test_a_missing_file_has_no_mark(self, tmp_path: Path) -> None:
        """A file that cannot be seen is None (its watcher keeps what it loaded)."""
        assert stat_mark(tmp_path / "absent") is None
