//go:build bench

package bench_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/bench/load"
	"github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/token"
)

// Message contents: a spoken user utterance and an assistant answer of
// typical voice-assistant length.
var (
	userMessage      = "Could you move my dentist appointment from Tuesday afternoon to Thursday morning, around ten if possible?"
	assistantMessage = strings.Repeat("Sure. I found an opening on Thursday at 10:15 with Dr. Patel; I have moved the appointment and sent the confirmation to your email. ", 2)
)

// uuidSQL is the SQL spelling of the benchmark's ids, for seeding.
func uuidSQL(expr string) string { return "lpad(to_hex(" + expr + "), 32, '0')::uuid" }

// seedSet is one population of benchmark conversations.
type seedSet struct {
	idBase        int // conversation i has id uuidOf(idBase+i), owner uuidOf(userBase+idBase+i)
	conversations int
	messages      int // per conversation, an even number (turns of two)
}

// seed writes users, conversations, their messages (and through the items
// migration's trigger their items) and turn ids with
// INSERT ... SELECT generate_series in big batches on parallel connections,
// then VACUUM ANALYZE so that no autovacuum runs during the measurements.
func seed(ctx context.Context, t *testing.T, db *sql.DB, s seedSet) time.Duration {
	t.Helper()
	start := time.Now()
	exec := func(q string, args ...any) {
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("seed: %v\n%s", err, q)
		}
	}
	lo, hi := s.idBase+1, s.idBase+s.conversations
	exec(`INSERT INTO users (id, email, display_name, password_hash)
SELECT `+uuidSQL(fmt.Sprintf("%d + i", userBase))+`, 'bench-' || i || '@example.com', 'Bench ' || i, 'not-a-hash'
  FROM generate_series($1::int, $2::int) AS i`, lo, hi)
	exec(`INSERT INTO conversations (id, user_id, title, message_count, last_seq)
SELECT `+uuidSQL("i")+`, `+uuidSQL(fmt.Sprintf("%d + i", userBase))+`, 'Benchmark ' || i, $3::bigint, $3::bigint
  FROM generate_series($1::int, $2::int) AS i`, lo, hi, s.messages)

	// Batches of about a million messages, in (conversation, seq) order so
	// the primary key grows at its right edge.
	per := max(1, 1_000_000/s.messages)
	batches := make(chan [2]int)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for b := range batches {
				exec(`INSERT INTO messages (conversation_id, seq, id, role, content, turn_id)
SELECT `+uuidSQL("i")+`, s, gen_random_uuid(), 2 - s % 2,
       CASE WHEN s % 2 = 1 THEN $3::text ELSE $4::text END, 'seed-' || ((s + 1) / 2)
  FROM generate_series($1::int, $2::int) AS i, generate_series(1, $5::int) AS s
 ORDER BY i, s`, b[0], b[1], userMessage, assistantMessage, s.messages)
				exec(`INSERT INTO turns (conversation_id, turn_id, first_seq, message_count)
SELECT `+uuidSQL("i")+`, 'seed-' || k, 2 * k - 1, 2
  FROM generate_series($1::int, $2::int) AS i, generate_series(1, $3::int) AS k
 ORDER BY i, k`, b[0], b[1], s.messages/2)
			}
		})
	}
	for b := lo; b <= hi; b += per {
		batches <- [2]int{b, min(hi, b+per-1)}
	}
	close(batches)
	wg.Wait()
	exec(`VACUUM (ANALYZE) users, conversations, messages, turns, items`)
	return time.Since(start)
}

// lastSeqs reads the current last_seq of the set's conversations.
func lastSeqs(ctx context.Context, t *testing.T, db *sql.DB, s seedSet) map[string]int64 {
	t.Helper()
	rows, err := db.QueryContext(ctx, `SELECT id::text, last_seq FROM conversations WHERE id BETWEEN `+
		uuidSQL("$1::int")+` AND `+uuidSQL("$2::int"), s.idBase+1, s.idBase+s.conversations)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := make(map[string]int64)
	for rows.Next() {
		var id string
		var last int64
		if err := rows.Scan(&id, &last); err != nil {
			t.Fatal(err)
		}
		out[id] = last
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// tokens mints an access token for each owner with the replicas' own key
// set, as Login would (the users have no usable password: Login's argon2id
// would make seeding take minutes and is not what is measured).
func tokens(t *testing.T, keysPath string, s seedSet) []string {
	t.Helper()
	b, err := os.ReadFile(keysPath)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := token.ParseKeySet(b)
	if err != nil {
		t.Fatal(err)
	}
	m, err := token.NewManager(keys, token.Options{Issuer: "parley", Audience: "parley"})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, s.conversations)
	for i := range out {
		is, err := m.Issue(uuid.MustParse(uuidOf(userBase+s.idBase+i+1)), auth.KindUser, 2*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = is.Token
	}
	return out
}

// writeSpec writes the load generator's spec for a set, with the current
// last_seq of every conversation.
func writeSpec(ctx context.Context, t *testing.T, db *sql.DB, s seedSet, toks []string, path string) load.Spec {
	t.Helper()
	last := lastSeqs(ctx, t, db, s)
	spec := load.Spec{UserMessage: userMessage, AssistantMessage: assistantMessage}
	for i := range s.conversations {
		id := uuidOf(s.idBase + i + 1)
		spec.Targets = append(spec.Targets, load.Target{ConversationID: id, Token: toks[i], LastSeq: last[id]})
	}
	writeJSON(t, path, spec)
	return spec
}
