package archtest

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// kind is a package's place in the architecture; the rules are stated in
// kinds, so a package that has none cannot be checked and fails.
type kind string

const (
	// domain: types, rules and the interfaces they need; the standard
	// library and other domains only.
	domain kind = "domain"
	// adapter: implements domain interfaces over one piece of
	// infrastructure (PostgreSQL, Valkey, LiveKit, blob storage, JWT).
	adapter kind = "adapter"
	// transport: the API on the wire (handlers and generated code).
	transport kind = "transport"
	// wiring: builds everything from configuration (cmd, app, config).
	wiring kind = "wiring"
	// testOnly: harnesses and checks never linked into the server.
	testOnly kind = "test-only"
	// client: a program of its own that talks to Parley over its API.
	client kind = "client"
)

// pkg is what the rules need of a package, as go list reports it.
type pkg struct {
	ImportPath string
	Dir        string
	Name       string
	GoFiles    []string
	Imports    []string
	Deps       []string
}

// arch is a module's classification and the exceptions its rules allow.
type arch struct {
	module string
	// kinds maps a package's path inside the module to its kind.
	kinds map[string]kind
	// partOf maps a package to the adapter it belongs to (data it embeds):
	// that adapter may import it.
	partOf map[string]string
	// standalone packages depend on no other package of the module, no
	// infrastructure and no wire format, and only wiring and tests depend
	// on them.
	standalone map[string]bool
	// sqlAllowed and envAllowed are the packages (or single files, as
	// package/file.go), besides internal/postgres and internal/config,
	// allowed SQL text and environment reads, each with its reason.
	sqlAllowed, envAllowed map[string]string
	// connectErrors is the one file (package/file.go) that makes Connect
	// errors; connectErrorsAllowed are the others allowed to, as
	// sqlAllowed, each with its reason.
	connectErrors        string
	connectErrorsAllowed map[string]string
}

func (a arch) rel(importPath string) (string, bool) {
	if importPath == a.module {
		return ".", true
	}
	rel, ok := strings.CutPrefix(importPath, a.module+"/")
	return rel, ok
}

// unclassified returns a violation for every package of the module without
// a kind, and for every kind naming a package that no longer exists (a
// rename would otherwise leave its new name unchecked by accident).
func (a arch) unclassified(pkgs []pkg) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range pkgs {
		rel, ok := a.rel(p.ImportPath)
		if !ok {
			continue
		}
		seen[rel] = true
		if _, ok := a.kinds[rel]; !ok {
			out = append(out, fmt.Sprintf("%s has no kind: add it to kinds in internal/archtest (domain, adapter, transport, wiring, test-only or client)", rel))
		}
	}
	for rel := range a.kinds {
		if !seen[rel] {
			out = append(out, fmt.Sprintf("%s is classified but is not a package of the module", rel))
		}
	}
	slices.Sort(out)
	return out
}

// infrastructure is what only adapters and wiring may depend on.
var infrastructure = []string{
	"github.com/uptrace/bun",
	"github.com/jackc/pgx",
	"github.com/valkey-io/valkey-go",
	"github.com/livekit/",
	"github.com/Azure/azure-sdk-for-go",
	"github.com/lestrrat-go/jwx",
}

// wire is the API's encoding, which domains must not know.
func (a arch) wire() []string {
	return []string{"connectrpc.com/", "google.golang.org/protobuf", "google.golang.org/grpc", a.module + "/internal/gen"}
}

func matches(dep, banned string) bool {
	return dep == banned || strings.HasPrefix(dep, strings.TrimSuffix(banned, "/")+"/") ||
		(strings.HasSuffix(banned, "/") && strings.HasPrefix(dep, banned))
}

// dependencies checks, over each package's transitive dependencies, that
// they point inward: domains know no infrastructure, wire format, metrics
// or other layer; transport knows no infrastructure; nothing inside the
// server depends on cmd; only wiring and tests reach the handlers.
func (a arch) dependencies(pkgs []pkg) []string {
	var out []string
	rpc := a.module + "/internal/rpc"
	for _, p := range pkgs {
		rel, ok := a.rel(p.ImportPath)
		if !ok {
			continue
		}
		k := a.kinds[rel]
		var banned []string
		switch k {
		case domain:
			banned = append(append(banned, infrastructure...), a.wire()...)
			banned = append(banned, "github.com/prometheus/")
		case transport:
			banned = append(banned, infrastructure...)
		}
		if a.standalone[rel] {
			banned = append(append(banned, infrastructure...), a.wire()...)
			banned = append(banned, a.module+"/")
		}
		if k != wiring && k != testOnly {
			for s := range a.standalone {
				if s != rel {
					banned = append(banned, a.module+"/"+s)
				}
			}
		}
		if k != wiring && k != testOnly && k != client {
			banned = append(banned, a.module+"/cmd")
		}
		if k != wiring && k != testOnly && !matches(p.ImportPath, rpc) {
			banned = append(banned, rpc)
		}
		for _, dep := range p.Deps {
			for _, b := range banned {
				if matches(dep, b) {
					out = append(out, fmt.Sprintf("%s (%s) depends on %s", rel, k, dep))
				}
			}
			// A domain's own imports inside the module are domains.
			if depRel, ok := a.rel(dep); ok && k == domain && a.kinds[depRel] != domain && a.kinds[depRel] != "" {
				out = append(out, fmt.Sprintf("%s (domain) depends on %s (%s)", rel, depRel, a.kinds[depRel]))
			}
		}
	}
	return out
}

// adaptersApart checks that no adapter imports another: each adapts one
// thing to the domains, and wiring composes them.
func (a arch) adaptersApart(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		rel, ok := a.rel(p.ImportPath)
		if !ok || a.kinds[rel] != adapter {
			continue
		}
		for _, imp := range p.Imports {
			impRel, ok := a.rel(imp)
			if ok && a.kinds[impRel] == adapter && a.partOf[impRel] != rel {
				out = append(out, fmt.Sprintf("adapter %s imports adapter %s", rel, impRel))
			}
		}
	}
	return out
}

// sqlText is the start of a statement: SQL the stores own.
// SELECT … FROM and UPDATE … SET only in capitals: in lower case they are
// also English ("update the set").
var sqlText = regexp.MustCompile(`(?s)\bSELECT\b.+\bFROM\b|\bUPDATE\s+\S+\s+SET\b|` +
	`(?i:\bINSERT\s+INTO\b|\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(DATABASE|TABLE|INDEX|EXTENSION|SCHEMA)\b|\bTRUNCATE\s+TABLE\b)`)

// sqlOutsidePostgres checks that no package but internal/postgres (and
// the allowed) has SQL text in a string literal, or in a sum of literals.
func (a arch) sqlOutsidePostgres(pkgs []pkg) []string {
	var out []string
	a.inspect(&out, pkgs, func(rel string, fset *token.FileSet, f *ast.File, n ast.Node, _ []ast.Node) bool {
		if rel == "internal/postgres" || allowed(a.sqlAllowed, rel, fset, f) {
			return false
		}
		var text string
		switch e := n.(type) {
		case *ast.BinaryExpr:
			s, ok := literalSum(e)
			if !ok {
				return true
			}
			text = s
		case *ast.BasicLit:
			if e.Kind != token.STRING {
				return true
			}
			text, _ = strconv.Unquote(e.Value)
		default:
			return true
		}
		if sqlText.MatchString(text) {
			out = append(out, fmt.Sprintf("%s: SQL outside internal/postgres: %q", fset.Position(n.Pos()), text))
			return false
		}
		return true
	})
	return out
}

// literalSum is the text of a + b + ... when every term is a string
// literal.
func literalSum(e ast.Expr) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.ParenExpr:
		return literalSum(e.X)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		l, ok := literalSum(e.X)
		if !ok {
			return "", false
		}
		r, ok := literalSum(e.Y)
		return l + r, ok
	}
	return "", false
}

// envReaders are the functions that read the process environment.
var envReaders = map[string][]string{
	"os":      {"Getenv", "LookupEnv", "Environ", "ExpandEnv"},
	"syscall": {"Getenv", "Environ"},
}

// environmentOutsideConfig checks that only internal/config (and the
// allowed) reads the environment. The one other use is a main function
// handing os.Getenv itself to run, which is how configuration reaches
// config.Load; what receives it (a func named getenv) hands it on to config
// and never calls it, except in a client, a program of its own.
func (a arch) environmentOutsideConfig(pkgs []pkg) []string {
	var out []string
	a.inspect(&out, pkgs, func(rel string, fset *token.FileSet, f *ast.File, n ast.Node, stack []ast.Node) bool {
		if rel == "internal/config" || allowed(a.envAllowed, rel, fset, f) {
			return false
		}
		if call, ok := n.(*ast.CallExpr); ok && a.kinds[rel] != client {
			// A getenv handed down is called only by config: anywhere else
			// it is a read of the environment around config.
			if id, ok := call.Fun.(*ast.Ident); ok && id.Name == "getenv" {
				out = append(out, fmt.Sprintf("%s: getenv called outside internal/config", fset.Position(call.Pos())))
			}
			return true
		}
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		path, ok := importedAs(f, id.Name)
		if !ok || !slices.Contains(envReaders[path], sel.Sel.Name) {
			return true
		}
		if f.Name.Name == "main" && sel.Sel.Name == "Getenv" && path == "os" && !called(sel, stack) && inFunc(stack, "main") {
			return true
		}
		out = append(out, fmt.Sprintf("%s: %s.%s outside internal/config", fset.Position(sel.Pos()), path, sel.Sel.Name))
		return true
	})
	return out
}

// connectErrorMakers are connect's constructors of the errors a server
// sends.
var connectErrorMakers = []string{"NewError", "NewWireError"}

// connectErrorsOutsideOneFile checks that Connect errors are made only in
// a.connectErrors (and the allowed files): handlers return domain errors,
// which that file maps to codes, and the refusals of interceptors and
// middleware are named there too, so a client's error text has one home.
// Generated code (the Unimplemented handlers) is not checked.
func (a arch) connectErrorsOutsideOneFile(pkgs []pkg) []string {
	var out []string
	a.inspect(&out, pkgs, func(rel string, fset *token.FileSet, f *ast.File, n ast.Node, _ []ast.Node) bool {
		if n == f {
			file := rel + "/" + filepath.Base(fset.Position(f.Pos()).Filename)
			return file != a.connectErrors && !ast.IsGenerated(f) && !allowed(a.connectErrorsAllowed, rel, fset, f)
		}
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || !slices.Contains(connectErrorMakers, sel.Sel.Name) {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		if path, ok := importedAs(f, id.Name); ok && path == "connectrpc.com/connect" {
			out = append(out, fmt.Sprintf("%s: connect.%s outside %s: return a domain error it maps, or add a refusal there", fset.Position(sel.Pos()), sel.Sel.Name, a.connectErrors))
		}
		return true
	})
	return out
}

// allowed reports whether exceptions name f's package or f itself.
func allowed(exceptions map[string]string, rel string, fset *token.FileSet, f *ast.File) bool {
	return exceptions[rel] != "" || exceptions[rel+"/"+filepath.Base(fset.Position(f.Pos()).Filename)] != ""
}

// importedAs returns the import path that name refers to in f.
func importedAs(f *ast.File, name string) (string, bool) {
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		local := path[strings.LastIndex(path, "/")+1:]
		if imp.Name != nil {
			local = imp.Name.Name
		}
		if local == name {
			return path, true
		}
	}
	return "", false
}

// called reports whether sel is the function of a call (the parent on the
// stack is a CallExpr with sel as Fun).
func called(sel *ast.SelectorExpr, stack []ast.Node) bool {
	if len(stack) == 0 {
		return false
	}
	call, ok := stack[len(stack)-1].(*ast.CallExpr)
	return ok && call.Fun == sel
}

func inFunc(stack []ast.Node, name string) bool {
	for _, n := range stack {
		if fd, ok := n.(*ast.FuncDecl); ok && fd.Recv == nil && fd.Name.Name == name {
			return true
		}
	}
	return false
}

// inspect parses every Go file of the module's packages and calls visit on
// each node with its ancestors; visit returning false skips the node's
// children. A file that does not parse is a violation. Comments are kept
// for ast.IsGenerated.
func (a arch) inspect(out *[]string, pkgs []pkg, visit func(rel string, fset *token.FileSet, f *ast.File, n ast.Node, stack []ast.Node) bool) {
	fset := token.NewFileSet()
	for _, p := range pkgs {
		rel, ok := a.rel(p.ImportPath)
		if !ok {
			continue
		}
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.SkipObjectResolution|parser.ParseComments)
			if err != nil {
				*out = append(*out, err.Error())
				continue
			}
			var stack []ast.Node
			ast.Inspect(f, func(n ast.Node) bool {
				if n == nil {
					stack = stack[:len(stack)-1]
					return true
				}
				if !visit(rel, fset, f, n, stack) {
					return false
				}
				stack = append(stack, n)
				return true
			})
		}
	}
}

// wiringSize checks that the package rel holds only wiring, by its size: at
// most maxLines lines of non-test Go, and no function longer than
// maxFuncLines. Anything bigger has a home of its own elsewhere.
func (a arch) wiringSize(pkgs []pkg, rel string, maxLines, maxFuncLines int) []string {
	var out []string
	total, seen := 0, false
	fset := token.NewFileSet()
	for _, p := range pkgs {
		if r, ok := a.rel(p.ImportPath); !ok || r != rel {
			continue
		}
		seen = true
		for _, name := range p.GoFiles {
			path := filepath.Join(p.Dir, name)
			src, err := os.ReadFile(path)
			if err != nil {
				out = append(out, err.Error())
				continue
			}
			total += bytes.Count(src, []byte("\n")) // as wc -l counts
			f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
			if err != nil {
				out = append(out, err.Error())
				continue
			}
			for _, d := range f.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok {
					continue
				}
				if n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1; n > maxFuncLines {
					out = append(out, fmt.Sprintf("%s: %s is %d lines, more than %d: split it, or move what is not wiring where it belongs", fset.Position(fd.Pos()), fd.Name.Name, n, maxFuncLines))
				}
			}
		}
	}
	switch {
	case !seen:
		out = append(out, fmt.Sprintf("%s is not a package of the module", rel))
	case total > maxLines:
		out = append(out, fmt.Sprintf("%s has %d lines of non-test Go, more than %d: move what is not wiring where it belongs", rel, total, maxLines))
	}
	return out
}
