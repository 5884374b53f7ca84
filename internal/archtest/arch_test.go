// Package archtest enforces Parley's dependency rules: domains stay free of
// infrastructure, the rpc layer never touches drivers or SDKs, and only
// internal/config reads the environment. The rules are checked against what
// the compiler sees (go list), not against comments.
package archtest

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/parley-dev/parley"

type pkg struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Deps       []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// infrastructure is what only adapters and cmd may depend on.
var infrastructure = []string{
	"github.com/uptrace/bun",
	"github.com/jackc/pgx",
	"github.com/valkey-io/valkey-go",
	"github.com/livekit/",
	"github.com/Azure/azure-sdk-for-go",
	"github.com/lestrrat-go/jwx",
}

// wire is the API's encoding, which domains must not know.
var wire = []string{
	"connectrpc.com/",
	"google.golang.org/protobuf",
	"google.golang.org/grpc",
	module + "/internal/gen",
}

var domains = []string{"account", "auth", "conversation", "room", "file"}

// localServers starts database servers as child processes: a tool for the
// test harness and `parley dev`, never for a serving path. It stands alone.
const localServers = module + "/internal/localserver"

func TestDependenciesPointInward(t *testing.T) {
	pkgs := listPackages(t)
	// The rules below only mean something if go list reports transitive
	// dependencies: the postgres adapter must be seen to use Bun.
	sawBun := false
	for _, p := range pkgs {
		if p.ImportPath == module+"/internal/postgres" {
			for _, d := range p.Deps {
				sawBun = sawBun || d == "github.com/uptrace/bun"
			}
		}
	}
	if !sawBun {
		t.Fatal("go list did not report internal/postgres depending on Bun; the check would be vacuous")
	}
	for _, p := range pkgs {
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		var banned []string
		switch {
		case isDomain(rel):
			banned = append(append(banned, infrastructure...), wire...)
			banned = append(banned, "github.com/prometheus/", module+"/internal/rpc", module+"/internal/postgres")
		case rel == "internal/rpc":
			banned = append(banned, infrastructure...)
		case p.ImportPath == localServers:
			banned = append(append(banned, infrastructure...), wire...)
			banned = append(banned, module+"/internal", module+"/cmd")
		case strings.HasPrefix(rel, "internal/") && !strings.HasPrefix(rel, "internal/testenv"):
			banned = append(banned, module+"/cmd")
		}
		if !strings.HasPrefix(rel, "internal/rpc") && !strings.HasPrefix(rel, "cmd/") && !strings.HasPrefix(rel, "internal/archtest") {
			banned = append(banned, module+"/internal/rpc")
		}
		if !strings.HasPrefix(rel, "cmd/") && !strings.HasPrefix(rel, "internal/testenv") {
			banned = append(banned, localServers)
		}
		for _, dep := range p.Deps {
			for _, b := range banned {
				if dep == b || strings.HasPrefix(dep, strings.TrimSuffix(b, "/")+"/") || (strings.HasSuffix(b, "/") && strings.HasPrefix(dep, b)) {
					t.Errorf("%s depends on %s", rel, dep)
				}
			}
		}
	}
}

func isDomain(rel string) bool {
	for _, d := range domains {
		if rel == "internal/"+d {
			return true
		}
	}
	return false
}

// TestOnlyConfigReadsTheEnvironment keeps configuration in one place:
// everything else receives a config.Config.
func TestOnlyConfigReadsTheEnvironment(t *testing.T) {
	// The examples are programs of their own, configured like any client.
	allowed := map[string]bool{"internal/config": true, "internal/testenv": true, "cmd/parley": true, "examples/agent": true}
	fset := token.NewFileSet()
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		if allowed[rel] {
			continue
		}
		for _, f := range p.GoFiles {
			file, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "os" &&
					(sel.Sel.Name == "Getenv" || sel.Sel.Name == "LookupEnv" || sel.Sel.Name == "Environ") {
					t.Errorf("%s: os.%s outside internal/config", fset.Position(sel.Pos()), sel.Sel.Name)
				}
				return true
			})
		}
	}
}
