"""The model store's errors: one family, so a caller maps every store problem to its exit code
or HTTP status by catching ModelStoreError; each message is one line naming the fix."""

from __future__ import annotations


class ModelStoreError(Exception):
    """A model store problem the user can act on; the message is one line naming the fix."""


class NoCurrentModel(ModelStoreError):
    """The device has no pointer yet."""


class CorruptPointer(ModelStoreError):
    """The pointer does not parse, or names files that are not its own version's."""


class CorruptMeta(ModelStoreError):
    """A version's meta does not parse, or names files that are not its own."""


class ChecksumMismatch(ModelStoreError):
    """A model file's bytes do not match the sha256 recorded for them."""


class VersionNotFound(ModelStoreError):
    """The version does not exist (or is incomplete) for that device."""


class InvalidVersion(ModelStoreError, ValueError):
    """A version id that is not `YYYYMMDD_HHMMSS_xxxxxx`; it becomes part of a file name."""


class NoPreviousVersion(ModelStoreError):
    """A rollback without `to` on a pointer that records no previous version."""


class UnsafePath(ModelStoreError):
    """A version file that is a link leading outside the device's versions folder."""


class LockTimeout(ModelStoreError):
    """Another process held the device lock for longer than the timeout."""


class LockUnavailable(ModelStoreError):
    """The shared database that serialises promotions across hosts cannot be reached."""
