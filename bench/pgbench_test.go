package bench_test

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// The benchmark's ids are integers spelled as UUIDs (32 hex digits, zero
// padded): conversation i is idBase+i and its owner userBase+idBase+i.
// pgbench variables are integers, so its scripts turn them into the same
// UUIDs with an immutable expression on the parameter.
const (
	userBase = 0x100000
	// uuidOfVar spells pgbench integer variable v as the UUID text the
	// statement's own ::uuid cast then reads.
	uuidOfVar = "lpad(to_hex(:%s::bigint), 32, '0')"
)

// uuidOf is the Go spelling.
func uuidOf(n int) string {
	s := fmt.Sprintf("%032x", n)
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

var paramRE = regexp.MustCompile(`\$([0-9]+)`)

// bindVars replaces each $n of a statement taken from the store with the
// pgbench expression vars[n]; pgbench then prepares the statement (-M
// prepared) with its variables as parameters, as pgx does with Parley's.
func bindVars(stmt string, vars map[int]string) (string, error) {
	var missing []string
	out := paramRE.ReplaceAllStringFunc(stmt, func(m string) string {
		n, _ := strconv.Atoi(m[1:])
		v, ok := vars[n]
		if !ok {
			missing = append(missing, m)
			return m
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("no pgbench variable for %v", missing)
	}
	// pgbench reads a statement up to a semicolon at the end of a line, and
	// a line per statement reads best in its log.
	return strings.Join(strings.Fields(out), " ") + ";\n", nil
}

// saveTurnScript is one SaveTurn of a two-message turn with a random turn
// id on a random benchmark conversation: postgres.PreviousSaveTurnSQL with the
// parameters postgres.SaveTurnArgs gives (owner scope, two messages).
// Message ids and contents are constants passed with -D (message ids carry
// no unique constraint).
func saveTurnScript(idBase, conversations int) (string, error) {
	stmt, err := bindVars(postgres.PreviousSaveTurnSQL, map[int]string{
		1:  fmt.Sprintf(uuidOfVar, "conv"),
		2:  fmt.Sprintf(uuidOfVar, "owner"),
		3:  ":turn",
		4:  ":nmsg",
		5:  ":user_msg_id",
		6:  ":role_user",
		7:  ":user_msg",
		8:  ":assistant_msg_id",
		9:  ":role_assistant",
		10: ":assistant_msg",
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`\set conv random(%d, %d)
\set owner :conv + %d
\set turn random(1, 4000000000000000000)
\set nmsg 2
%s`, idBase+1, idBase+conversations, userBase, stmt), nil
}

// listMessagesScript is what an uncached ListMessages runs: LastSeqSQL (the
// access check and cache key), then the newest page bounded by it with one
// extra row to learn whether there is more (postgres.ListMessagesNewestSQL).
func listMessagesScript(idBase, conversations int) (string, error) {
	lastSeq, err := bindVars(postgres.LastSeqSQL, map[int]string{
		1: fmt.Sprintf(uuidOfVar, "conv"),
		2: fmt.Sprintf(uuidOfVar, "owner"),
	})
	if err != nil {
		return "", err
	}
	page, err := bindVars(postgres.ListMessagesNewestSQL, map[int]string{
		1: fmt.Sprintf(uuidOfVar, "conv"),
		2: ":after",
		3: ":before",
		4: ":page_limit",
	})
	if err != nil {
		return "", err
	}
	// \gset needs the statement's own line end instead of a semicolon.
	lastSeq = strings.TrimSuffix(lastSeq, ";\n") + "\n\\gset\n"
	return fmt.Sprintf(`\set conv random(%d, %d)
\set owner :conv + %d
%s\set after 0
\set before :last_seq + 1
%s`, idBase+1, idBase+conversations, userBase, lastSeq, page), nil
}

// TestPgbenchScriptsUseTheStoresStatements keeps the scripts honest: every
// parameter bound, and the statement text otherwise the store's own.
func TestPgbenchScriptsUseTheStoresStatements(t *testing.T) {
	save, err := saveTurnScript(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	list, err := listMessagesScript(0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	for name, c := range map[string]struct{ script, stmt string }{
		"PreviousSaveTurnSQL":   {save, postgres.PreviousSaveTurnSQL},
		"LastSeqSQL":            {list, postgres.LastSeqSQL},
		"ListMessagesNewestSQL": {list, postgres.ListMessagesNewestSQL},
	} {
		if strings.Contains(c.script, "$") {
			t.Errorf("%s: unbound parameter in\n%s", name, c.script)
		}
		// Put the store's placeholders back and compare.
		back := regexp.MustCompile(`lpad\(to_hex\(:[a-z_]+::bigint\), 32, '0'\)`).ReplaceAllString(norm(c.script), "$$")
		back = regexp.MustCompile(`(^|[^:]):[a-z_]+`).ReplaceAllString(back, "${1}$$")
		want := paramRE.ReplaceAllString(norm(c.stmt), "$$")
		if !strings.Contains(back, want) {
			t.Errorf("%s not found verbatim in the script:\n%s\nwant\n%s", name, back, want)
		}
	}
	if _, err := bindVars("SELECT $1, $2", map[int]string{1: ":a"}); err == nil {
		t.Error("bindVars accepted an unbound $2")
	}
}

func TestUUIDSpellingsAgree(t *testing.T) {
	if got, want := uuidOf(0x10002a), "00000000-0000-0000-0000-00000010002a"; got != want {
		t.Errorf("uuidOf = %s, want %s", got, want)
	}
}
