package archtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The tests below show every rule failing on a deliberate violation: a
// synthetic package set for the rules over go list's graph, and the module
// under testdata/violations for the rules over source text. Each also
// passes a clean case, so a rule that reports everything fails too.

const fixture = "example.com/shop"

var shop = arch{
	module: fixture,
	kinds: map[string]kind{
		"internal/shop":     domain,
		"internal/catalog":  domain,
		"internal/pg":       adapter,
		"internal/pg/embed": adapter,
		"internal/kv":       adapter,
		"internal/api":      transport,
		"internal/config":   wiring,
		"internal/postgres": adapter,
		"cmd/app":           wiring,
		"internal/gone":     domain,
		"internal/procs":    adapter,
	},
	partOf:        map[string]string{"internal/pg/embed": "internal/pg"},
	standalone:    map[string]bool{"internal/procs": true},
	connectErrors: "internal/api/errors.go",
}

func fp(rel string) string { return fixture + "/" + rel }

func TestRuleEveryPackageHasAKind(t *testing.T) {
	pkgs := []pkg{{ImportPath: fp("internal/shop")}, {ImportPath: fp("internal/new")}, {ImportPath: "example.com/other/x"}}
	a := shop
	a.kinds = map[string]kind{"internal/shop": domain, "internal/gone": domain}
	want := []string{
		"internal/gone is classified but is not a package of the module",
		"internal/new has no kind: add it to kinds in internal/archtest (domain, adapter, transport, wiring, test-only or client)",
	}
	if got := a.unclassified(pkgs); !slices.Equal(got, want) {
		t.Errorf("unclassified:\n got %q\nwant %q", got, want)
	}
	a.kinds = map[string]kind{"internal/shop": domain, "internal/new": adapter}
	if got := a.unclassified(pkgs); len(got) != 0 {
		t.Errorf("every package classified, yet: %q", got)
	}
}

func TestRuleDependenciesPointInward(t *testing.T) {
	pkgs := []pkg{
		{ImportPath: fp("internal/shop"), Deps: []string{"context", fp("internal/catalog"), "github.com/uptrace/bun/dialect", fp("internal/pg"), "connectrpc.com/connect", fp("internal/gen/v1"), "github.com/prometheus/client_golang"}},
		{ImportPath: fp("internal/catalog"), Deps: []string{"errors"}},
		{ImportPath: fp("internal/api"), Deps: []string{"connectrpc.com/connect", "github.com/valkey-io/valkey-go"}},
		{ImportPath: fp("internal/kv"), Deps: []string{"github.com/valkey-io/valkey-go", fp("cmd/app"), fp("internal/rpc")}},
		{ImportPath: fp("cmd/app"), Deps: []string{fp("internal/rpc"), fp("internal/pg"), "github.com/uptrace/bun", fp("internal/procs")}},
		{ImportPath: fp("internal/procs"), Deps: []string{"os/exec", fp("internal/shop"), "github.com/jackc/pgx/v5"}},
		{ImportPath: fp("internal/pg"), Deps: []string{fp("internal/procs")}},
	}
	got := shop.dependencies(pkgs)
	want := []string{
		"internal/shop (domain) depends on github.com/uptrace/bun/dialect",
		"internal/shop (domain) depends on internal/pg (adapter)",
		"internal/shop (domain) depends on connectrpc.com/connect",
		"internal/shop (domain) depends on example.com/shop/internal/gen/v1",
		"internal/shop (domain) depends on github.com/prometheus/client_golang",
		"internal/api (transport) depends on github.com/valkey-io/valkey-go",
		"internal/kv (adapter) depends on example.com/shop/cmd/app",
		"internal/kv (adapter) depends on example.com/shop/internal/rpc",
		"internal/procs (adapter) depends on example.com/shop/internal/shop",
		"internal/procs (adapter) depends on github.com/jackc/pgx/v5",
		"internal/pg (adapter) depends on example.com/shop/internal/procs",
	}
	if !slices.Equal(got, want) {
		t.Errorf("dependencies:\n got %q\nwant %q", got, want)
	}
}

func TestRuleAdaptersDoNotImportEachOther(t *testing.T) {
	pkgs := []pkg{
		{ImportPath: fp("internal/pg"), Imports: []string{"database/sql", fp("internal/shop"), fp("internal/pg/embed"), fp("internal/kv")}},
		{ImportPath: fp("internal/kv"), Imports: []string{fp("internal/shop"), fp("internal/pg/embed")}},
		{ImportPath: fp("cmd/app"), Imports: []string{fp("internal/pg"), fp("internal/kv")}},
	}
	want := []string{
		"adapter internal/pg imports adapter internal/kv",
		"adapter internal/kv imports adapter internal/pg/embed",
	}
	if got := shop.adaptersApart(pkgs); !slices.Equal(got, want) {
		t.Errorf("adapters:\n got %q\nwant %q", got, want)
	}
}

// fixturePackages lists testdata/violations as go list would.
func fixturePackages(t *testing.T) []pkg {
	t.Helper()
	var pkgs []pkg
	for _, rel := range []string{"internal/shop", "internal/postgres", "internal/config", "cmd/app", "internal/api"} {
		dir := filepath.Join("testdata", "violations", filepath.FromSlash(rel))
		names, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(names) == 0 {
			t.Fatalf("fixture %s: %v", dir, err)
		}
		p := pkg{ImportPath: fp(rel), Dir: dir}
		for _, n := range names {
			p.GoFiles = append(p.GoFiles, filepath.Base(n))
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

var wantRE = regexp.MustCompile(`// want (sql|env|connect)`)

// wanted returns file:line of every line of the fixture marked for rule.
func wanted(t *testing.T, pkgs []pkg, rule string) []string {
	t.Helper()
	var out []string
	for _, p := range pkgs {
		for _, f := range p.GoFiles {
			path := filepath.Join(p.Dir, f)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for i, line := range strings.Split(string(data), "\n") {
				if m := wantRE.FindStringSubmatch(line); m != nil && m[1] == rule {
					out = append(out, fmt.Sprintf("%s:%d", path, i+1))
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("the fixture marks no %s violation", rule)
	}
	slices.Sort(out)
	return out
}

// lines reduces violations to their file:line.
func lines(violations []string) []string {
	var out []string
	for _, v := range violations {
		parts := strings.SplitN(v, ":", 3)
		if len(parts) < 3 {
			out = append(out, v)
			continue
		}
		out = append(out, parts[0]+":"+parts[1])
	}
	slices.Sort(out)
	return out
}

// reportsMarked fails unless got reports the fixture's lines marked for
// rule, and no other.
func reportsMarked(t *testing.T, pkgs []pkg, rule string, got []string) {
	t.Helper()
	if want := wanted(t, pkgs, rule); !slices.Equal(lines(got), want) {
		t.Errorf("%s violations reported at\n %q\nwant\n %q\n(%q)", rule, lines(got), want, got)
	}
}

func TestRuleSQLOnlyInPostgres(t *testing.T) {
	pkgs := fixturePackages(t)
	reportsMarked(t, pkgs, "sql", shop.sqlOutsidePostgres(pkgs))
	a := shop
	a.sqlAllowed = map[string]string{"internal/shop/shop.go": "allowed for this test"}
	if got := a.sqlOutsidePostgres(pkgs); len(got) != 0 {
		t.Errorf("with internal/shop allowed, still: %q", got)
	}
}

func TestRuleOnlyConfigReadsTheEnvironment(t *testing.T) {
	pkgs := fixturePackages(t)
	reportsMarked(t, pkgs, "env", shop.environmentOutsideConfig(pkgs))
	a := shop
	a.envAllowed = map[string]string{"internal/shop": "allowed for this test", "cmd/app": "allowed for this test"}
	if got := a.environmentOutsideConfig(pkgs); len(got) != 0 {
		t.Errorf("with the fixture allowed, still: %q", got)
	}
}

func TestRuleConnectErrorsOnlyInOneFile(t *testing.T) {
	pkgs := fixturePackages(t)
	reportsMarked(t, pkgs, "connect", shop.connectErrorsOutsideOneFile(pkgs))
	a := shop
	a.connectErrorsAllowed = map[string]string{"internal/api/handler.go": "allowed for this test"}
	if got := a.connectErrorsOutsideOneFile(pkgs); len(got) != 0 {
		t.Errorf("with handler.go allowed, still: %q", got)
	}
	// errors.go is spared for being the one file, not for anything else.
	a = shop
	a.connectErrors = "internal/api/handler.go"
	errorsGo := filepath.Join("testdata", "violations", "internal", "api", "errors.go") + ":"
	got := a.connectErrorsOutsideOneFile(pkgs)
	if len(got) != 2 || !strings.HasPrefix(got[0], errorsGo) || !strings.HasPrefix(got[1], errorsGo) {
		t.Errorf("with handler.go the one file, errors.go's two errors are not what is reported: %q", got)
	}
}

func TestRuleCmdOnlyWires(t *testing.T) {
	pkgs := fixturePackages(t)
	// The fixture's main.go: 18 lines, run 6 of them.
	got := shop.wiringSize(pkgs, "cmd/app", 17, 5)
	want := []string{"run is 6 lines, more than 5", "cmd/app has 18 lines of non-test Go, more than 17"}
	if len(got) != len(want) {
		t.Fatalf("wiringSize: %q; want %d violations", got, len(want))
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("violation %d: %q; want it to say %q", i, got[i], w)
		}
	}
	if got := shop.wiringSize(pkgs, "cmd/app", 18, 6); len(got) != 0 {
		t.Errorf("within the limits, still: %q", got)
	}
	if got := shop.wiringSize(pkgs, "cmd/gone", 18, 6); len(got) != 1 {
		t.Errorf("a package that is not there: %q; want it reported", got)
	}
}
