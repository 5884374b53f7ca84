package bench_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/localserver"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/testenv"
	"github.com/parley-dev/parley/internal/webhook"
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

// turnItemIDsOfVar spells the item ids SaveTurn gives a turn's two
// messages (conversation.TurnItems) from pgbench integer variable v. No
// literal holds a colon before a letter: pgbench would take it for a
// variable.
const turnItemIDsOfVar = "ARRAY[concat_ws(':', 'saveturn', :%[1]s::text, 'user'), concat_ws(':', 'saveturn', :%[1]s::text, 'assistant')]"

// saveTurnScript is one SaveTurn of a two-message turn with a random turn
// id on a random benchmark conversation, as the store runs it:
// postgres.AppendItemsSQL with the parameters postgres.AppendItemsArgs
// gives for conversation.TurnItems (owner scope, no agent, the turn id as
// message id, two plain text messages whose payloads the statement makes,
// the webhook batching constants; the seeded owners have no endpoints).
// Message ids and contents are constants passed with -D (pgbenchDefines;
// message ids carry no unique constraint), the empty ones literals (-D
// takes no empty value), each array parameter an ARRAY of them.
func saveTurnScript(idBase, conversations int) (string, error) {
	stmt, err := bindVars(postgres.AppendItemsSQL, map[int]string{
		1:  fmt.Sprintf(uuidOfVar, "conv"),
		2:  fmt.Sprintf(uuidOfVar, "owner"),
		3:  ":turn",
		4:  ":nitems",
		5:  ":nitems",
		6:  "''",
		7:  ":turn",
		8:  fmt.Sprintf(turnItemIDsOfVar, "turn"),
		9:  "ARRAY[:kind_message, :kind_message]",
		10: "ARRAY[:role_user, :role_assistant]",
		11: "ARRAY[:user_msg, :assistant_msg]",
		12: "ARRAY['', '']",
		13: "ARRAY['', '']",
		14: "ARRAY[:user_msg_id, :assistant_msg_id]",
		15: "ARRAY[1, 2]",
		16: ":items_window_secs",
		17: ":max_items_per_event",
		18: ":items_appended",
	})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`\set conv random(%d, %d)
\set owner :conv + %d
\set turn random(1, 4000000000000000000)
\set nitems 2
%s`, idBase+1, idBase+conversations, userBase, stmt), nil
}

// pgbenchDefines are the -D constants of the scripts.
func pgbenchDefines(userMessage, assistantMessage string, pageLimit int) []string {
	return []string{
		"-D", "user_msg=" + userMessage, "-D", "assistant_msg=" + assistantMessage,
		"-D", "user_msg_id=0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5b", "-D", "assistant_msg_id=0190a5b1-3c4d-7e6f-8a9b-0c1d2e3f4a5c",
		"-D", fmt.Sprintf("role_user=%d", conversation.RoleUser), "-D", fmt.Sprintf("role_assistant=%d", conversation.RoleAssistant),
		"-D", fmt.Sprintf("kind_message=%d", conversation.ItemMessage),
		"-D", fmt.Sprintf("items_window_secs=%v", webhook.ItemsWindow.Seconds()),
		"-D", fmt.Sprintf("max_items_per_event=%d", webhook.MaxItemsPerEvent), "-D", "items_appended=" + webhook.ItemsAppended,
		"-D", fmt.Sprintf("page_limit=%d", pageLimit),
	}
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
		"AppendItemsSQL":        {save, postgres.AppendItemsSQL},
		"LastSeqSQL":            {list, postgres.LastSeqSQL},
		"ListMessagesNewestSQL": {list, postgres.ListMessagesNewestSQL},
	} {
		if strings.Contains(c.script, "$") {
			t.Errorf("%s: unbound parameter in\n%s", name, c.script)
		}
		// Put the store's placeholders back and compare.
		back := regexp.MustCompile(`lpad\(to_hex\(:[a-z_]+::bigint\), 32, '0'\)`).ReplaceAllString(norm(c.script), "$$")
		back = regexp.MustCompile(`ARRAY\[[^]]*\]`).ReplaceAllString(back, "$$")
		back = strings.ReplaceAll(back, "''::", "$::")
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

// TestPgbenchSaveTurnScriptRuns runs the SaveTurn script with pgbench on a
// migrated database: each transaction stores a turn as SaveTurn does, two
// message items with SaveTurn's ids, their messages and the turn id.
func TestPgbenchSaveTurnScriptRuns(t *testing.T) {
	binDir, err := localserver.FindPostgres("")
	if err != nil {
		t.Fatal(err)
	}
	url := testenv.DatabaseURL(t)
	db, err := postgres.Open(t.Context(), url, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	owner, conv := uuidOf(userBase+1), uuidOf(1)
	if _, err := db.DB.ExecContext(t.Context(), `INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, 'b@example.com', 'B', 'not-a-hash')`, owner); err != nil {
		t.Fatal(err)
	}
	if _, err := db.DB.ExecContext(t.Context(), `INSERT INTO conversations (id, user_id, title) VALUES ($1, $2, 'b')`, conv, owner); err != nil {
		t.Fatal(err)
	}
	script, err := saveTurnScript(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "save.sql")
	if err := os.WriteFile(path, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	const turns = 5
	args := append([]string{"-n", "-M", "prepared", "-c", "1", "-t", strconv.Itoa(turns), "-f", path},
		pgbenchDefines("u", "a", 51)...)
	if out, err := exec.CommandContext(t.Context(), filepath.Join(binDir, "pgbench"), append(args, url)...).CombinedOutput(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, out)
	}
	var items, messages, lastItem, lastSeq, turnRows, userItems int64
	if err := db.DB.QueryRowContext(t.Context(), `SELECT
       (SELECT count(*) FROM items WHERE kind = 1 AND payload->'message' IS NOT NULL),
       (SELECT count(*) FROM messages WHERE item_seq IS NOT NULL),
       c.last_item_seq, c.last_seq,
       (SELECT count(*) FROM turns),
       (SELECT count(*) FROM items i JOIN turns t ON i.id = 'saveturn:' || t.turn_id || ':user' AND i.message_id = t.turn_id)
  FROM conversations c WHERE c.id = $1`, conv).Scan(&items, &messages, &lastItem, &lastSeq, &turnRows, &userItems); err != nil {
		t.Fatal(err)
	}
	if items != 2*turns || messages != 2*turns || lastItem != 2*turns || lastSeq != 2*turns || turnRows != turns || userItems != turns {
		t.Fatalf("after %d turns: %d message items, %d messages, last_item_seq %d, last_seq %d, %d turns, %d user items named by their turn",
			turns, items, messages, lastItem, lastSeq, turnRows, userItems)
	}
}

func TestUUIDSpellingsAgree(t *testing.T) {
	if got, want := uuidOf(0x10002a), "00000000-0000-0000-0000-00000010002a"; got != want {
		t.Errorf("uuidOf = %s, want %s", got, want)
	}
}
