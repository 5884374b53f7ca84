// Package load drives Parley for the benchmark: closed-loop clients that
// each keep exactly one request in flight and record every request's
// latency, and WatchMessages fan-out with per-delivery delays. The
// orchestrator (bench/bench_test.go) runs it as its own process,
// cmd bench/loadgen, so its CPU and memory never count as Parley's.
package load

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"
)

// Target is one benchmark conversation and the access token of its owner.
type Target struct {
	ConversationID string `json:"conversation_id"`
	Token          string `json:"token"`
	// LastSeq is the conversation's last_seq when the spec was written.
	LastSeq int64 `json:"last_seq"`
}

// Spec is what the orchestrator hands the load generator.
type Spec struct {
	Targets          []Target `json:"targets"`
	UserMessage      string   `json:"user_message"`
	AssistantMessage string   `json:"assistant_message"`
}

// ReadSpec reads a Spec from a JSON file.
func ReadSpec(path string) (Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Spec{}, err
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return Spec{}, fmt.Errorf("spec %s: %w", path, err)
	}
	if len(s.Targets) == 0 {
		return Spec{}, fmt.Errorf("spec %s: no targets", path)
	}
	return s, nil
}

// Latency summarises exact latencies (every sample kept, then sorted), in
// milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

// Summarize sorts samples in place and returns their percentiles
// (nearest-rank).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, d := range samples {
		sum += d
	}
	at := func(q float64) float64 {
		i := int(q*float64(len(samples))+0.5) - 1
		i = max(0, min(i, len(samples)-1))
		return ms(samples[i])
	}
	return Latency{
		Count: int64(len(samples)),
		P50:   at(0.50),
		P90:   at(0.90),
		P99:   at(0.99),
		P999:  at(0.999),
		Max:   ms(samples[len(samples)-1]),
		Mean:  ms(sum / time.Duration(len(samples))),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Result is the outcome of one run, written as JSON.
type Result struct {
	Mode     string  `json:"mode"`
	RPC      string  `json:"rpc,omitempty"`
	Protocol string  `json:"protocol,omitempty"`
	Clients  int     `json:"clients,omitempty"`
	Seconds  float64 `json:"seconds"`
	Requests int64   `json:"requests"`
	RPS      float64 `json:"rps"`
	Errors   int64   `json:"errors"`
	// ErrorSamples are the first few distinct errors, for the report.
	ErrorSamples []string `json:"error_samples,omitempty"`
	Latency      Latency  `json:"latency"`
	// ClientCPUSeconds is the load generator's own CPU time (user and
	// system) during the measured window.
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`

	// Watch fan-out only.
	Streams        int     `json:"streams,omitempty"`
	OpenSeconds    float64 `json:"open_seconds,omitempty"`
	Saves          int64   `json:"saves,omitempty"`
	SaveLatency    Latency `json:"save_latency,omitempty"`
	Deliveries     int64   `json:"deliveries,omitempty"`
	Missing        int64   `json:"missing,omitempty"`
	Duplicates     int64   `json:"duplicates,omitempty"`
	OutOfOrder     int64   `json:"out_of_order,omitempty"`
	EarlyDelivered int64   `json:"early_delivered,omitempty"`
}

// errorLog counts errors and keeps a few distinct samples.
type errorLog struct {
	count   int64
	samples []string
}

func (e *errorLog) add(err error) {
	e.count++
	if len(e.samples) < 5 {
		s := err.Error()
		if len(s) > 300 {
			s = s[:300]
		}
		if !slices.Contains(e.samples, s) {
			e.samples = append(e.samples, s)
		}
	}
}

func (e *errorLog) merge(o *errorLog) {
	e.count += o.count
	for _, s := range o.samples {
		if len(e.samples) < 5 && !slices.Contains(e.samples, s) {
			e.samples = append(e.samples, s)
		}
	}
}

// cpuTime is this process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
