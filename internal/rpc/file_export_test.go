package rpc

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

const (
	exportMessages      = 100_000
	maxExportHeapGrowth = 32 << 20
)

// TestExportOf100kMessagesInConstantMemory exports a conversation of
// 100,000 messages (about 35 MB of JSON, more than the budget) and samples
// the Go heap throughout: the export must stream from PostgreSQL to the
// blob, so the peak grows by less than 32 MiB. It is not parallel, so no
// other test of this process allocates meanwhile.
func TestExportOf100kMessagesInConstantMemory(t *testing.T) {
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			env := newFileEnv(t, kind, fileEnvOptions{})
			ctx := t.Context()
			owner := env.user(t)
			conv := env.conversation(t, owner)
			start := time.Now()
			if _, err := env.db.ExecContext(ctx, `INSERT INTO messages (conversation_id, seq, id, role, content, turn_id, created_at)
SELECT ?::uuid, g, gen_random_uuid(), 1 + g % 2, 'message ' || g || ': ' || repeat('lorem ipsum ', 20), NULL, now()
  FROM generate_series(1, ?::bigint) AS g`, conv, exportMessages); err != nil {
				t.Fatal(err)
			}
			if _, err := env.db.ExecContext(ctx, `UPDATE conversations SET last_seq = ?, message_count = ? WHERE id = ?::uuid`,
				exportMessages, exportMessages, conv); err != nil {
				t.Fatal(err)
			}
			t.Logf("seeded %d messages in %v", exportMessages, time.Since(start))

			runtime.GC()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)
			rssBase := resetPeakRSS(t)
			peak := sampleHeap()
			start = time.Now()
			resp, err := env.convs.ExportConversation(ctx, as(owner, &parleyv1.ExportConversationRequest{ConversationId: conv}))
			heapPeak := peak()
			if err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			growth := int64(heapPeak) - int64(base.HeapInuse)
			rssGrowth := peakRSS(t) - rssBase
			f := resp.Msg.GetFile()
			t.Logf("%s: exported %d messages (%.1f MB) in %v; Go heap in use peaked %.1f MiB above the %.1f MiB baseline; peak RSS grew %.1f MiB",
				kind, exportMessages, float64(f.GetSizeBytes())/1e6, elapsed,
				float64(growth)/(1<<20), float64(base.HeapInuse)/(1<<20), float64(rssGrowth)/(1<<20))
			if f.GetSizeBytes() <= maxExportHeapGrowth {
				t.Fatalf("the export (%d bytes) is too small to show streaming", f.GetSizeBytes())
			}
			if growth >= maxExportHeapGrowth {
				t.Errorf("heap grew by %d bytes during the export, want < %d", growth, maxExportHeapGrowth)
			}
			checkExportDownload(t, resp.Msg.GetDownloadUrl(), exportMessages)
		})
	}
}

// sampleHeap polls the heap in use until the returned function is called,
// which answers the highest value seen.
func sampleHeap() func() uint64 {
	var (
		wg   sync.WaitGroup
		max  uint64
		stop = make(chan struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			max = maxU(max, ms.HeapInuse)
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	var result uint64
	return func() uint64 {
		once.Do(func() {
			close(stop)
			wg.Wait()
			result = max
		})
		return result
	}
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// resetPeakRSS resets the kernel's peak-RSS mark and returns the current
// RSS, both in bytes.
func resetPeakRSS(t *testing.T) int64 {
	t.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Logf("cannot reset peak RSS: %v", err)
	}
	return procStatus(t, "VmRSS:")
}

func peakRSS(t *testing.T) int64 { return procStatus(t, "VmHWM:") }

func procStatus(t *testing.T, field string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("%s not in /proc/self/status", field)
	return 0
}

// checkExportDownload streams the export back and checks it holds every
// message in seq order.
func checkExportDownload(t *testing.T, url string, want int) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("download = %d", resp.StatusCode)
	}
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	expect := func(want json.Delim) {
		t.Helper()
		tok, err := dec.Token()
		if err != nil || tok != want {
			t.Fatalf("token %v (%v), want %v", tok, err, want)
		}
	}
	expect('{')
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		if key != "messages" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				t.Fatal(err)
			}
			continue
		}
		expect('[')
		n := 0
		for dec.More() {
			var m struct {
				Seq string `json:"seq"` // proto JSON writes int64 as a string
			}
			if err := dec.Decode(&m); err != nil {
				t.Fatal(err)
			}
			n++
			if m.Seq != strconv.Itoa(n) {
				t.Fatalf("message %d has seq %s", n, m.Seq)
			}
		}
		expect(']')
		if n != want {
			t.Fatalf("%d messages, want %d", n, want)
		}
	}
	expect('}')
}
