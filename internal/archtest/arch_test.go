// Package archtest enforces Parley's architecture: every package has a
// kind (domain, adapter, transport, wiring, test-only, client), domains stay
// free of infrastructure and wire formats, adapters do not import each
// other, SQL text lives only in internal/postgres, only internal/config
// reads the environment, and only internal/rpc/errors.go makes Connect
// errors. The rules are checked against what the compiler
// sees (go list, go/ast), not against comments; rules_test.go states them
// and violations_test.go shows each one failing.
package archtest

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os/exec"
	"sync"
	"testing"
)

const module = "github.com/parley-dev/parley"

// parley is the module's classification. A package added without a kind
// fails TestEveryPackageHasAKind.
var parley = arch{
	module: module,
	kinds: map[string]kind{
		"internal/account":      domain,
		"internal/auth":         domain,
		"internal/conversation": domain,
		"internal/file":         domain,
		"internal/room":         domain,
		"internal/rule":         domain,
		"internal/webhook":      domain,
		// keyset and outage hold no rules of their own, but they are
		// standard-library leaves the domains and adapters share, held to
		// the domain rules.
		"internal/keyset": domain,
		"internal/outage": domain,
		// limit is the vocabulary rpc and ratelimit share for budgets and
		// decisions, so neither copies the other's types.
		"internal/limit": domain,

		"internal/postgres":     adapter,
		"migrations":            adapter,
		"internal/cache":        adapter,
		"internal/valkeypubsub": adapter,
		"internal/ratelimit":    adapter,
		"internal/revocation":   adapter,
		"internal/valkeyconfig": adapter,
		"internal/rtc":          adapter,
		"internal/blobstore":    adapter,
		"internal/token":        adapter,
		// Outbound webhooks on the wire: the SSRF-guarded client and the
		// Standard Webhooks signature, which is their wire format.
		"internal/webhookhttp": adapter,

		"internal/rpc":                           transport,
		"internal/agentsjson":                    transport,
		"internal/gen/parley/v1":                 transport,
		"internal/gen/parley/v1/parleyv1connect": transport,

		"cmd/parley":      wiring,
		"internal/app":    wiring,
		"internal/config": wiring,

		"internal/localserver": adapter,
		"internal/memlimit":    adapter,

		"internal/testenv":     testOnly,
		"internal/rtc/rtctest": testOnly,
		"internal/archtest":    testOnly,
		"bench":                testOnly,
		"bench/load":           testOnly,
		"bench/loadgen":        testOnly,
		"deploy":               testOnly,

		"examples/agent": client,
	},
	partOf: map[string]string{"migrations": "internal/postgres"},
	// localserver starts database servers as child processes: a tool for
	// the test harness and parley dev, never for a serving path.
	// memlimit sets the process's memory limit from its cgroup: wiring's
	// business at start-up, never a request's.
	standalone: map[string]bool{"internal/localserver": true, "internal/memlimit": true},
	sqlAllowed: map[string]string{
		// Each test gets a database cloned from a migrated template; the
		// harness creates and drops them (CREATE DATABASE … TEMPLATE),
		// which no store does.
		"internal/testenv": "per-test databases",
	},
	envAllowed: map[string]string{
		// The harness finds server binaries on PATH and may be pointed at
		// running servers (PARLEY_TEST_*); it is never linked into serve.
		"internal/testenv": "test harness",
	},
	// No file is allowed besides: the interceptors' and middleware's
	// protocol-level refusals are made in errors.go as well.
	connectErrors: "internal/rpc/errors.go",
}

// modulePackages lists the module once for all the tests.
var modulePackages = sync.OnceValues(func() ([]pkg, error) {
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	return pkgs, nil
})

func listPackages(t *testing.T) []pkg {
	t.Helper()
	pkgs, err := modulePackages()
	if err != nil {
		t.Fatal(err)
	}
	// The rules only mean something if go list reports what they read: the
	// postgres adapter must be seen to use Bun, and cmd/parley to have files.
	sawBun, sawFiles := false, false
	for _, p := range pkgs {
		switch p.ImportPath {
		case module + "/internal/postgres":
			for _, d := range p.Deps {
				sawBun = sawBun || d == "github.com/uptrace/bun"
			}
		case module + "/cmd/parley":
			sawFiles = len(p.GoFiles) > 0
		}
	}
	if !sawBun || !sawFiles {
		t.Fatalf("go list did not report internal/postgres's dependencies or cmd/parley's files; the checks would be vacuous")
	}
	return pkgs
}

func report(t *testing.T, violations []string) {
	t.Helper()
	for _, v := range violations {
		t.Error(v)
	}
}

func TestEveryPackageHasAKind(t *testing.T) {
	report(t, parley.unclassified(listPackages(t)))
}

func TestDependenciesPointInward(t *testing.T) {
	report(t, parley.dependencies(listPackages(t)))
}

func TestAdaptersDoNotImportEachOther(t *testing.T) {
	report(t, parley.adaptersApart(listPackages(t)))
}

func TestSQLOnlyInPostgres(t *testing.T) {
	report(t, parley.sqlOutsidePostgres(listPackages(t)))
}

// TestOnlyConfigReadsTheEnvironment keeps configuration in one place:
// everything else receives a config.Config.
func TestOnlyConfigReadsTheEnvironment(t *testing.T) {
	report(t, parley.environmentOutsideConfig(listPackages(t)))
}

// TestConnectErrorsOnlyInRPCErrors keeps what clients read of an error in
// one file, internal/rpc/errors.go.
func TestConnectErrorsOnlyInRPCErrors(t *testing.T) {
	report(t, parley.connectErrorsOutsideOneFile(listPackages(t)))
}

// TestCmdOnlyWires keeps cmd/parley to the command line and its hand-off to
// config and internal/app: under 500 lines, as wc -l counts them, with no
// function over 60. internal/app, which builds a replica, keeps its
// functions as short.
func TestCmdOnlyWires(t *testing.T) {
	pkgs := listPackages(t)
	report(t, parley.wiringSize(pkgs, "cmd/parley", 499, 60))
	report(t, parley.wiringSize(pkgs, "internal/app", math.MaxInt, 60))
}
