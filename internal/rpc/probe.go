package rpc

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/grpchealth"
)

// Dependency is a shared service whose health /readyz reports.
type Dependency struct {
	Name  string
	Check func(ctx context.Context) error
	// Required makes an outage of the dependency turn /readyz 503. Off by
	// default: see Probe.
	Required bool
}

// Probe tracks this replica's life cycle for /healthz, /readyz and the gRPC
// health service: not ready until start-up finishes, not ready again once
// draining starts. A shared dependency's outage is reported in the body but
// does not turn /readyz 503 unless the dependency is Required: every replica
// would leave the load balancer at once over a blip that they all share.
type Probe struct {
	ready    atomic.Bool
	draining atomic.Bool
	deps     []Dependency
	health   *grpchealth.StaticChecker
}

// NewProbe returns a Probe that is not ready yet.
func NewProbe(deps ...Dependency) *Probe {
	return &Probe{deps: deps, health: grpchealth.NewStaticChecker(serviceNames...)}
}

// SetReady marks start-up as finished.
func (p *Probe) SetReady() {
	p.ready.Store(true)
	p.syncHealth()
}

// SetDraining marks the replica as shutting down.
func (p *Probe) SetDraining() {
	p.draining.Store(true)
	p.syncHealth()
}

// Ready reports whether the replica takes traffic.
func (p *Probe) Ready() bool { return p.ready.Load() && !p.draining.Load() }

func (p *Probe) syncHealth() {
	status := grpchealth.StatusNotServing
	if p.Ready() {
		status = grpchealth.StatusServing
	}
	p.health.SetStatus("", status)
	for _, s := range serviceNames {
		p.health.SetStatus(s, status)
	}
}

func (p *Probe) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"status":"alive"}` + "\n"))
}

func (p *Probe) readyz(w http.ResponseWriter, r *http.Request) {
	body := struct {
		Status       string            `json:"status"`
		Dependencies map[string]string `json:"dependencies"`
	}{Dependencies: make(map[string]string, len(p.deps))}
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	missing := false
	for _, d := range p.deps {
		if err := d.Check(ctx); err != nil {
			// The cause stays in the logs of the component that failed;
			// connection strings must not leak through a public probe.
			body.Dependencies[d.Name] = "unavailable"
			missing = missing || d.Required
		} else {
			body.Dependencies[d.Name] = "ok"
		}
	}
	code := http.StatusOK
	switch {
	case p.draining.Load():
		body.Status, code = "draining", http.StatusServiceUnavailable
	case !p.ready.Load():
		body.Status, code = "starting", http.StatusServiceUnavailable
	case missing:
		body.Status, code = "unavailable", http.StatusServiceUnavailable
	default:
		body.Status = "ready"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}
