package memlimit

import (
	"io"
	"log/slog"
	"runtime/debug"
	"testing"
	"testing/fstest"
)

func TestCgroupMemoryLimit(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  int64
		ok    bool
	}{
		{"v2 in a container", map[string]string{
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "536870912\n",
		}, 512 << 20, true},
		{"v2 unlimited", map[string]string{
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "max\n",
		}, 0, false},
		{"v2 own group", map[string]string{
			"proc/self/cgroup": "0::/system.slice/parley.service\n",
			"sys/fs/cgroup/system.slice/parley.service/memory.max": "1073741824\n",
			"sys/fs/cgroup/memory.max":                             "max\n",
		}, 1 << 30, true},
		{"v1", map[string]string{
			"proc/self/cgroup": "5:cpu,cpuacct:/\n4:memory:/kubepods/pod1\n0::/\n",
			"sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes": "268435456\n",
		}, 256 << 20, true},
		{"v1 unlimited", map[string]string{
			"proc/self/cgroup":                           "4:memory:/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
		}, 0, false},
		{"no cgroups", map[string]string{}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fstest.MapFS{}
			for p, c := range tt.files {
				root[p] = &fstest.MapFile{Data: []byte(c)}
			}
			got, ok := cgroupMemoryLimit(root)
			if got != tt.want || ok != tt.ok {
				t.Errorf("cgroupMemoryLimit = %d, %v; want %d, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestSetMemoryLimit(t *testing.T) {
	// The runtime's limit is process-wide: restore it.
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	container := fstest.MapFS{
		"proc/self/cgroup":         {Data: []byte("0::/\n")},
		"sys/fs/cgroup/memory.max": {Data: []byte("1000000000\n")},
	}

	debug.SetMemoryLimit(1 << 40)
	Set(Auto, container, log)
	if got := debug.SetMemoryLimit(-1); got != 900000000 {
		t.Errorf("auto in a container: limit %d, want 90%% of 1e9", got)
	}
	Set(300<<20, container, log)
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("explicit: limit %d, want 300MiB", got)
	}
	debug.SetMemoryLimit(1 << 40)
	// config.Load makes the limit 0 when GOMEMLIMIT is set.
	Set(0, container, log)
	if got := debug.SetMemoryLimit(-1); got != 1<<40 {
		t.Errorf("GOMEMLIMIT set: limit changed to %d", got)
	}
	Set(Auto, fstest.MapFS{}, log)
	if got := debug.SetMemoryLimit(-1); got != 1<<40 {
		t.Errorf("auto without a container limit: limit changed to %d", got)
	}
}
