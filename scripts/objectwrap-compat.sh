#!/usr/bin/env bash
# Works around an abort in better-sqlite3 12 on Node 24 and 26 (upstream: WiseLibs/better-sqlite3#1515, closed
# unfixed; 13.x, which has the fix, does not run on Node 20). Their header-only node::ObjectWrap registers a cleanup
# hook per wrapped object and removes it in the destructor; when V8 collects a Statement from a GC weak callback
# with no Environment current, that removal hits `Assertion failed: (env) != nullptr` and aborts the process,
# at shutdown or at any later GC. Node 20's ObjectWrap registers no such hook. The class is compiled into the
# addon, so building better-sqlite3 against a header whose hooks are no-ops restores Node 20's behaviour
# (objects still alive at exit are left to the OS, as before). Usage: objectwrap-compat.sh NODE_DIR
set -euo pipefail
h="$1/include/node/node_object_wrap.h"
grep -q 'mailhook: no per-object cleanup hooks' "$h" && exit 0
# Node 20's header registers no cleanup hooks: nothing to patch (the Dockerfile's NODE_IMAGE may be Node 20).
grep -q 'void AddCleanupHook' "$h" || exit 0
perl -0pi -e 's/  void AddCleanupHook\(\) \{.*?\n  \}\n\n  void RemoveCleanupHook\(\) \{.*?\n  \}\n/  \/\/ mailhook: no per-object cleanup hooks (see scripts\/objectwrap-compat.sh)\n  void AddCleanupHook() {}\n  void RemoveCleanupHook() {}\n/s' "$h"
grep -q 'mailhook: no per-object cleanup hooks' "$h" || { echo "objectwrap-compat: $h has an unexpected shape; not patched" >&2; exit 1; }
