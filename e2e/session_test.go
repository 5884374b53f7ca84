//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	lkauth "github.com/livekit/protocol/auth"
	"google.golang.org/protobuf/encoding/protojson"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
)

// TestE2E starts the cluster once; the session runs first, then the rolling
// restarts under load on the same replicas and database.
func TestE2E(t *testing.T) {
	c := newCluster(t, 3)
	t.Run("session", func(t *testing.T) { testSession(t, c) })
	t.Run("rolling restart", func(t *testing.T) { testRollingRestart(t, c) })
	t.Run("mixed versions", func(t *testing.T) { testMixedVersions(t, c) })
}

const (
	sessionClient = "session"
	sessionTurns  = 50
	password      = "correct horse battery staple"
)

// sessionMessage is what the session's agent stores as seq: a turn's
// question, then its answer.
func sessionMessage(seq int64) (role parleyv1.Role, content, turnID string) {
	turn := (seq + 1) / 2
	turnID = fmt.Sprintf("session-turn-%02d", turn)
	if seq%2 == 1 {
		return parleyv1.Role_ROLE_USER, fmt.Sprintf("question %d", turn), turnID
	}
	return parleyv1.Role_ROLE_ASSISTANT, fmt.Sprintf("answer %d", turn), turnID
}

// checkSessionMessages checks msgs are seqs first, first±1, … (by step) of
// the session's conversation, with the right content.
func checkSessionMessages(t *testing.T, what string, msgs []*parleyv1.Message, first int64, n int, step int64) {
	t.Helper()
	if len(msgs) != n {
		t.Fatalf("%s: %d messages, want %d", what, len(msgs), n)
	}
	for i, m := range msgs {
		seq := first + int64(i)*step
		role, content, turnID := sessionMessage(seq)
		if m.GetSeq() != seq || m.GetRole() != role || m.GetContent() != content || m.GetTurnId() != turnID {
			t.Fatalf("%s: message %d is (seq %d, %v, %q, %q), want (seq %d, %v, %q, %q)", what, i,
				m.GetSeq(), m.GetRole(), m.GetContent(), m.GetTurnId(), seq, role, content, turnID)
		}
	}
}

func testSession(t *testing.T, c *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := newWeb(c.lb.URL, sessionClient)

	reg, err := w.auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{
		Email: "Ada@Example.com", Password: password, DisplayName: "Ada",
	}))
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	user, tokens := reg.Msg.GetUser(), reg.Msg.GetTokens()
	token := tokens.GetAccessToken()

	created, err := w.rooms.CreateRoom(ctx, bearer(&parleyv1.CreateRoomRequest{Name: "design review"}, token))
	if err != nil {
		t.Fatalf("create room: %v", err)
	}
	room := created.Msg.GetRoom()
	conv := room.GetConversationId()
	checkLiveKitRoom(t, c, room)

	joined, err := w.rooms.JoinRoom(ctx, bearer(&parleyv1.JoinRoomRequest{RoomId: room.GetId()}, token))
	if err != nil {
		t.Fatalf("join room: %v", err)
	}
	checkJoin(t, c, joined.Msg.GetJoin(), user.GetId(), room.GetLivekitRoom())

	// The web app watches the conversation while the agent talks.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := newWatcher(w, token, conv)
	steps := len(c.lb.route(sessionClient))
	watchDone := make(chan int, 1)
	go func() { watchDone <- watch.run(watchCtx) }()
	// Wait until the watch has gone through the balancer, so the session's
	// requests stay one after the other.
	for len(c.lb.route(sessionClient)) == steps {
		if ctx.Err() != nil {
			t.Fatal("the watch never reached the balancer")
		}
		time.Sleep(5 * time.Millisecond)
	}

	ag := newAgent(c.lb.URL, sessionClient, c.agentKey(t, "session-agent"))
	save := func(from, to int64) {
		t.Helper()
		for turn := from; turn <= to; turn++ {
			_, question, turnID := sessionMessage(2*turn - 1)
			_, answer, _ := sessionMessage(2 * turn)
			resp, err := ag.SaveTurn(ctx, conv, turnID, question, answer)
			if err != nil {
				t.Fatalf("save turn %d: %v", turn, err)
			}
			if resp.GetReplayed() {
				t.Fatalf("turn %d answered as a replay", turn)
			}
			checkSessionMessages(t, fmt.Sprintf("SaveTurn %d", turn), resp.GetMessages(), 2*turn-1, 2, 1)
		}
	}
	save(1, sessionTurns/2)

	// The history so far, newest first, a small page at a time.
	page, err := listAll(ctx, w.conversations, token, conv, 20, parleyv1.Order_ORDER_NEWEST_FIRST)
	if err != nil {
		t.Fatalf("list messages: %v", err)
	}
	checkSessionMessages(t, "history newest first", page, sessionTurns, sessionTurns, -1)

	save(sessionTurns/2+1, sessionTurns)

	waitCtx, waitCancel := context.WithTimeout(ctx, 30*time.Second)
	err = watch.waitFor(waitCtx, 2*sessionTurns)
	waitCancel()
	if err != nil {
		t.Fatal(err)
	}
	streamed, problems, ends, _ := watch.snapshot()
	if len(problems) > 0 || len(ends) > 0 {
		t.Fatalf("watch: problems %v, streams ended %v", problems, ends)
	}
	checkSessionMessages(t, "watched", streamed, 1, 2*sessionTurns, 1)
	stopWatch()
	if opened := <-watchDone; opened != 1 {
		t.Errorf("the watch opened %d streams with no replica down, want 1", opened)
	}

	history, err := listAll(ctx, w.conversations, token, conv, 30, parleyv1.Order_ORDER_OLDEST_FIRST)
	if err != nil {
		t.Fatalf("list messages: %v", err)
	}
	checkSessionMessages(t, "history oldest first", history, 1, 2*sessionTurns, 1)

	upload := uploadFile(ctx, t, w, token, conv)
	exportConversation(ctx, t, w, token, conv, history)

	files, err := w.files.ListFiles(ctx, bearer(&parleyv1.ListFilesRequest{ConversationId: conv}, token))
	if err != nil {
		t.Fatalf("list files: %v", err)
	}
	kinds := map[parleyv1.FileKind]int{}
	for _, f := range files.Msg.GetFiles() {
		kinds[f.GetKind()]++
	}
	if len(files.Msg.GetFiles()) != 2 || kinds[parleyv1.FileKind_FILE_KIND_UPLOAD] != 1 || kinds[parleyv1.FileKind_FILE_KIND_EXPORT] != 1 {
		t.Errorf("files: %v, want the upload %s and one export", files.Msg.GetFiles(), upload)
	}

	ended, err := w.rooms.EndRoom(ctx, bearer(&parleyv1.EndRoomRequest{RoomId: room.GetId()}, token))
	if err != nil {
		t.Fatalf("end room: %v", err)
	}
	if ended.Msg.GetRoom().GetStatus() != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
		t.Errorf("ended room is %v", ended.Msg.GetRoom().GetStatus())
	}
	waitFor(ctx, t, "LiveKit room deleted", func() bool {
		for _, name := range c.livekit.DeletedRooms() {
			if name == room.GetLivekitRoom() {
				return true
			}
		}
		return false
	})

	if _, err := w.auth.Logout(ctx, bearer(&parleyv1.LogoutRequest{RefreshToken: tokens.GetRefreshToken()}, token)); err != nil {
		t.Fatalf("logout: %v", err)
	}
	// Through the balancer too: the next two calls land on two more
	// replicas.
	for range 2 {
		_, err := w.users.GetProfile(ctx, bearer(&parleyv1.GetProfileRequest{}, token))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("profile after logout: %v, want unauthenticated", err)
		}
	}

	checkRoute(t, c)
	checkMetrics(ctx, t, c)

	t.Run("every replica shows every turn once, in seq order", func(t *testing.T) {
		for _, r := range c.replicas {
			auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, r.base())
			login, err := auth.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Email: "ada@example.com", Password: password}))
			if err != nil {
				t.Fatalf("login on replica %d: %v", r.index, err)
			}
			convs := parleyv1connect.NewConversationServiceClient(http.DefaultClient, r.base())
			msgs, err := listAll(ctx, convs, login.Msg.GetTokens().GetAccessToken(), conv, 200, parleyv1.Order_ORDER_OLDEST_FIRST)
			if err != nil {
				t.Fatalf("list on replica %d: %v", r.index, err)
			}
			checkSessionMessages(t, fmt.Sprintf("replica %d", r.index), msgs, 1, 2*sessionTurns, 1)
		}
	})

	t.Run("the revoked tokens are refused by every replica", func(t *testing.T) {
		for _, r := range c.replicas {
			users := parleyv1connect.NewUserServiceClient(http.DefaultClient, r.base())
			_, err := users.GetProfile(ctx, bearer(&parleyv1.GetProfileRequest{}, token))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("revoked access token on replica %d: %v, want unauthenticated", r.index, err)
			}
			auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, r.base())
			_, err = auth.Refresh(ctx, connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: tokens.GetRefreshToken()}))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("revoked refresh token on replica %d: %v, want unauthenticated", r.index, err)
			}
		}
	})

	t.Run("the rate limit is shared", func(t *testing.T) { checkSharedRateLimit(ctx, t, c) })
}

// checkLiveKitRoom checks that the fake LiveKit was asked to create the
// room with its conversation in the metadata.
func checkLiveKitRoom(t *testing.T, c *cluster, room *parleyv1.Room) {
	t.Helper()
	for _, req := range c.livekit.CreatedRooms() {
		if req.GetName() != room.GetLivekitRoom() {
			continue
		}
		var meta struct {
			ConversationID string `json:"conversation_id"`
		}
		if err := json.Unmarshal([]byte(req.GetMetadata()), &meta); err != nil || meta.ConversationID != room.GetConversationId() {
			t.Fatalf("LiveKit room metadata %q, want conversation_id %s", req.GetMetadata(), room.GetConversationId())
		}
		return
	}
	t.Fatalf("LiveKit was not asked to create room %q", room.GetLivekitRoom())
}

// checkJoin verifies the join token as LiveKit would.
func checkJoin(t *testing.T, c *cluster, join *parleyv1.JoinInfo, identity, livekitRoom string) {
	t.Helper()
	if join.GetLivekitUrl() == "" {
		t.Error("join info has no LiveKit URL")
	}
	v, err := lkauth.ParseAPIToken(join.GetToken())
	if err != nil {
		t.Fatalf("join token: %v", err)
	}
	_, grants, err := v.Verify(livekitSecret)
	if err != nil {
		t.Fatalf("join token does not verify with the LiveKit secret: %v", err)
	}
	if v.APIKey() != livekitKey || grants.Identity != identity || grants.Video == nil || !grants.Video.RoomJoin || grants.Video.Room != livekitRoom {
		t.Fatalf("join token for key %q, identity %q, grant %+v; want %q, %q, roomJoin %q", v.APIKey(), grants.Identity, grants.Video, livekitKey, identity, livekitRoom)
	}
}

// uploadFile uploads a file the way a browser does: the bytes go straight
// to blob storage on a signed URL, and Parley checks them when told.
func uploadFile(ctx context.Context, t *testing.T, w *web, token, conv string) string {
	t.Helper()
	data := []byte(strings.Repeat("meeting notes: ship the e2e suite\n", 300))
	sum := sha256.Sum256(data)
	created, err := w.files.CreateUpload(ctx, bearer(&parleyv1.CreateUploadRequest{
		ConversationId: conv, Filename: "notes.txt", ContentType: "text/plain", SizeBytes: int64(len(data)),
	}, token))
	if err != nil {
		t.Fatalf("create upload: %v", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, created.Msg.GetUploadUrl(), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range created.Msg.GetUploadHeaders() {
		req.Header.Set(k, v)
	}
	resp, err := w.http.Do(req)
	if err != nil {
		t.Fatalf("PUT upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("PUT upload: %s: %s", resp.Status, body)
	}
	id := created.Msg.GetFile().GetId()
	done, err := w.files.CompleteUpload(ctx, bearer(&parleyv1.CompleteUploadRequest{FileId: id}, token))
	if err != nil {
		t.Fatalf("complete upload: %v", err)
	}
	f := done.Msg.GetFile()
	if f.GetStatus() != parleyv1.FileStatus_FILE_STATUS_READY || f.GetSha256() != hex.EncodeToString(sum[:]) || f.GetSizeBytes() != int64(len(data)) {
		t.Fatalf("completed upload: %v", f)
	}
	got, err := w.files.GetFile(ctx, bearer(&parleyv1.GetFileRequest{FileId: id}, token))
	if err != nil {
		t.Fatalf("get file: %v", err)
	}
	if b := download(ctx, t, w, got.Msg.GetDownloadUrl()); !bytes.Equal(b, data) {
		t.Fatalf("downloaded %d bytes that differ from the %d uploaded", len(b), len(data))
	}
	return id
}

// exportConversation exports the conversation as JSON and checks that the
// download holds exactly the messages listed.
func exportConversation(ctx context.Context, t *testing.T, w *web, token, conv string, want []*parleyv1.Message) {
	t.Helper()
	resp, err := w.conversations.ExportConversation(ctx, bearer(&parleyv1.ExportConversationRequest{
		ConversationId: conv, Format: parleyv1.ExportFormat_EXPORT_FORMAT_JSON,
	}, token))
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	body := download(ctx, t, w, resp.Msg.GetDownloadUrl())
	if f := resp.Msg.GetFile(); f.GetKind() != parleyv1.FileKind_FILE_KIND_EXPORT || f.GetSizeBytes() != int64(len(body)) {
		t.Errorf("export file %v for a %d-byte download", f, len(body))
	}
	var doc struct {
		Conversation json.RawMessage   `json:"conversation"`
		Messages     []json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("export is not JSON: %v", err)
	}
	var c parleyv1.Conversation
	if err := protojson.Unmarshal(doc.Conversation, &c); err != nil || c.GetId() != conv {
		t.Fatalf("export's conversation %s (%v), want %s", doc.Conversation, err, conv)
	}
	msgs := make([]*parleyv1.Message, len(doc.Messages))
	for i, raw := range doc.Messages {
		msgs[i] = &parleyv1.Message{}
		if err := protojson.Unmarshal(raw, msgs[i]); err != nil {
			t.Fatalf("export message %d: %v", i, err)
		}
	}
	checkSessionMessages(t, "export", msgs, 1, len(want), 1)
	for i, m := range msgs {
		if m.GetId() != want[i].GetId() {
			t.Fatalf("export message %d has id %s, listed as %s", i, m.GetId(), want[i].GetId())
		}
	}
}

func download(ctx context.Context, t *testing.T, w *web, url string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := w.http.Do(req)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("download: %s, %v", resp.Status, err)
	}
	return b
}

// checkRoute checks from the balancer's record that each of the session's
// requests went to another replica than the one before it.
func checkRoute(t *testing.T, c *cluster) {
	t.Helper()
	route := c.lb.route(sessionClient)
	var line strings.Builder
	perReplica := make([]int, len(c.replicas))
	protos := map[string]int{}
	for i, p := range route {
		perReplica[p.backend]++
		protos[p.proto]++
		fmt.Fprintf(&line, " %d", p.backend)
		if i > 0 && p.backend == route[i-1].backend {
			t.Errorf("request %d (%s) went to replica %d, like the one before it (%s)", i, p.procedure, p.backend, route[i-1].procedure)
		}
	}
	if failed := c.lb.failed(); len(failed) > 0 {
		t.Errorf("requests failed upstream with every replica up: %v", failed)
	}
	// The web client speaks Connect over HTTP/1.1, the agent gRPC over h2c.
	if protos["HTTP/1.1"] == 0 || protos["HTTP/2.0"] == 0 {
		t.Errorf("session requests by protocol: %v, want both HTTP/1.1 and h2c", protos)
	}
	t.Logf("session: %d requests through the balancer (%s), replicas%s; per replica %v", len(route), formatCounts(protos), line.String(), perReplica)
}

var rpcCount = regexp.MustCompile(`^parley_rpc_requests_total\{code="[^"]*",procedure="([^"]*)"\} (\d+)$`)

// checkMetrics compares the balancer's record with what each replica says
// it handled (parley_rpc_requests_total), so the record is the replicas'
// word, not only the balancer's.
func checkMetrics(ctx context.Context, t *testing.T, c *cluster) {
	t.Helper()
	want := make([]map[string]int, len(c.replicas))
	for i := range want {
		want[i] = map[string]int{}
	}
	c.lb.mu.Lock()
	for _, p := range c.lb.picks {
		want[p.backend][p.procedure]++
	}
	c.lb.mu.Unlock()

	var diff string
	deadline := time.Now().Add(10 * time.Second)
	for {
		diff = ""
		for i, r := range c.replicas {
			got, err := scrapeRPCs(ctx, r.base())
			if err != nil {
				t.Fatalf("metrics of replica %d: %v", i, err)
			}
			for proc := range merge(got, want[i]) {
				if got[proc] != want[i][proc] {
					diff += fmt.Sprintf("\nreplica %d %s: handled %d, balancer sent %d", i, proc, got[proc], want[i][proc])
				}
			}
		}
		// A cancelled watch is counted when its handler notices.
		if diff == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if diff != "" {
		t.Errorf("replicas' metrics disagree with the balancer's record:%s", diff)
	}
}

func scrapeRPCs(ctx context.Context, base string) (map[string]int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := rpcCount.FindStringSubmatch(sc.Text()); m != nil {
			n, _ := strconv.Atoi(m[2])
			out[m[1]] += n
		}
	}
	return out, sc.Err()
}

func merge(a, b map[string]int) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// checkSharedRateLimit spends one user's per-minute budget through the
// balancer, a third on each replica, and checks that the budget is one
// budget: refused after userPerMinute calls, and then by every replica.
func checkSharedRateLimit(ctx context.Context, t *testing.T, c *cluster) {
	const client = "rate-limit"
	w := newWeb(c.lb.URL, client)
	reg, err := w.auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: "hasty@example.com", Password: password}))
	if err != nil {
		t.Fatal(err)
	}
	token := reg.Msg.GetTokens().GetAccessToken()
	start := time.Now()
	allowed := 0
	var refused *connect.Error
	for i := 0; i < 3*userPerMinute && refused == nil; i++ {
		_, err := w.users.GetProfile(ctx, bearer(&parleyv1.GetProfileRequest{}, token))
		switch connect.CodeOf(err) {
		case connect.CodeResourceExhausted:
			refused = err.(*connect.Error)
		default:
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			allowed++
		}
	}
	// The bucket refills at userPerMinute a minute while the loop runs.
	refill := int(time.Since(start).Seconds()*userPerMinute/60) + 1
	if refused == nil || allowed < userPerMinute || allowed > userPerMinute+refill {
		t.Fatalf("%d calls allowed across 3 replicas before refusal (%v); want %d (+%d refill)", allowed, refused, userPerMinute, refill)
	}
	if refused.Meta().Get("Retry-After") == "" {
		t.Error("refusal without Retry-After")
	}
	perReplica := make([]int, len(c.replicas))
	for _, p := range c.lb.route(client) {
		if strings.HasSuffix(p.procedure, "/GetProfile") {
			perReplica[p.backend]++
		}
	}
	for i, n := range perReplica {
		if n > allowed/2 {
			t.Errorf("replica %d served %d of the %d calls: the calls were not spread", i, n, allowed+1)
		}
	}
	for _, r := range c.replicas {
		users := parleyv1connect.NewUserServiceClient(http.DefaultClient, r.base())
		_, err := users.GetProfile(ctx, bearer(&parleyv1.GetProfileRequest{}, token))
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Errorf("replica %d after the budget was spent elsewhere: %v, want resource_exhausted", r.index, err)
		}
	}
	t.Logf("rate limit: %d of %d allowed calls per minute spent across replicas (GetProfile per replica %v), then refused everywhere", allowed, userPerMinute, perReplica)
}

// waitFor polls cond for up to 10 seconds.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within 10s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
