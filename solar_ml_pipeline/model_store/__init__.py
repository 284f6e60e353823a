"""The versioned model store: immutable version files, a per-device pointer, rollback, retention.

```
$MODEL_DIR/<device_id>/versions/model_<version>.pkl
$MODEL_DIR/<device_id>/versions/model_<version>_meta.json
$MODEL_DIR/<device_id>/current_model.json          the pointer
$MODEL_DIR/<device_id>/.lock                       serialises pointer moves and pruning
```

Promises kept here, so every caller (IO manager, promotion, CLI, API, serving) gets them:
- every file is written atomically (temp + fsync + rename + folder fsync): a crash leaves the
  old or the new file, never a torn one; a version file is never overwritten;
- a version is complete only when its meta exists beside its pkl (pkl written first, meta
  last; pruning deletes the meta first), so a half-written or half-pruned version is ignored;
- bytes are unpickled only after their sha256 matches the meta (and the pointer, when serving);
- a pointer or meta naming a file other than its own version's, inside this device's
  `versions/` folder, is refused (no path traversal, no symlink escape);
- the pointer only moves under the device's lock, after the target's sha256 is verified;
- a pointer is one of two kinds (`serving`): "model" names a version to serve (pointers
  written before the field existed are model pointers), "smart_persistence" says that no
  model of the device beats persistence, so serving falls back to smart persistence; it
  names no version (`version` null) but keeps the displaced model as `previous_version`.

Callers import from `registry` (ModelRegistry and the names around it) and `serving`; the
other modules hold one concern each: files (atomic writes, sha256), serialization (model
bytes), errors, layout (paths), versions, pointer (format and checks), locks, moves
(promote, rollback, fallback), retention (prune, temp files).
"""
