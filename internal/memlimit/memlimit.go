// Package memlimit gives the Go runtime its soft memory limit, derived from
// the container's (cgroup) memory limit when asked to.
package memlimit

import (
	"io/fs"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
)

// Auto is the limit that Set derives from the container's memory limit.
const Auto = -1

// Set gives the Go runtime its soft memory limit: limit bytes, none for 0,
// or for Auto nine tenths of the memory limit of the process's cgroup read
// under root (the file system root), if it has one. Without a limit the
// heap may grow to twice what is live before the GC runs, which is most of
// a replica's memory when it holds many WatchMessages streams; near the
// limit the GC runs sooner instead.
func Set(limit int64, root fs.FS, log *slog.Logger) {
	source := "PARLEY_MEMORY_LIMIT"
	if limit == Auto {
		limit, source = 0, "cgroup"
		// A tenth below the container's limit leaves room for what the
		// limit does not count (the binary's pages, C memory) before the
		// kernel's OOM killer steps in.
		if c, ok := cgroupMemoryLimit(root); ok {
			limit = c / 10 * 9
		}
	}
	if limit <= 0 {
		return
	}
	debug.SetMemoryLimit(limit)
	log.Info("memory limit set", slog.Int64("bytes", limit), slog.String("from", source))
}

// cgroupMemoryLimit returns the memory limit of the process's cgroup (v2,
// else v1), read under root (the file system root), and whether there is one.
func cgroupMemoryLimit(root fs.FS) (int64, bool) {
	self, err := fs.ReadFile(root, "proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(self)) {
		// hierarchy-ID:controllers:path; v2's unified hierarchy is "0::path".
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dir, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir, file = "sys/fs/cgroup", "memory.max"
		case containsController(parts[1], "memory"):
			dir, file = "sys/fs/cgroup/memory", "memory.limit_in_bytes"
		default:
			continue
		}
		// Inside a container's cgroup namespace the path is "/"; outside,
		// the limit may also sit on the process's own group.
		for _, p := range []string{strings.Trim(dir+parts[2], "/") + "/" + file, dir + "/" + file} {
			if n, ok := readLimit(root, p); ok {
				return n, true
			}
		}
	}
	return 0, false
}

func containsController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// readLimit reads a cgroup memory limit file; "max" (v2) and v1's page
// counter maximum both mean no limit.
func readLimit(root fs.FS, path string) (int64, bool) {
	b, err := fs.ReadFile(root, path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0, false
	}
	return n, true
}
