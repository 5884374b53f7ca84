package rpc

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/google/uuid"
	"github.com/livekit/protocol/livekit"
	"github.com/prometheus/client_golang/prometheus"

	lkauth "github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/file"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

// egressBlobs is the blob store as LiveKit egress sees it: it writes under
// names of its own choosing, with its own credentials, not through Parley.
type egressBlobs struct {
	t   *testing.T
	env *fileEnv
}

func (e egressBlobs) write(name string, data []byte) {
	e.t.Helper()
	if e.env.dirRoot != "" {
		p := filepath.Join(e.env.dirRoot, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			e.t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if _, err := e.container().NewBlockBlobClient(name).UploadBuffer(e.t.Context(), data, nil); err != nil {
		e.t.Fatal(err)
	}
}

func (e egressBlobs) exists(name string) bool {
	e.t.Helper()
	if e.env.dirRoot != "" {
		_, err := os.Stat(filepath.Join(e.env.dirRoot, filepath.FromSlash(name)))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			e.t.Fatal(err)
		}
		return err == nil
	}
	_, err := e.container().NewBlobClient(name).GetProperties(e.t.Context(), nil)
	// HEAD answers carry no error code, only the status.
	var re *azcore.ResponseError
	if err != nil && !(errors.As(err, &re) && re.StatusCode == http.StatusNotFound) {
		e.t.Fatal(err)
	}
	return err == nil
}

func (e egressBlobs) container() *container.Client {
	c, err := container.NewClientFromConnectionString(e.env.azConn, e.env.azContainer, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// TestEgressRecordingBecomesAFile follows a recording from LiveKit egress to
// a download: egress writes its file under its own name, the signed
// egress_ended webhook arrives (twice, as LiveKit may redeliver), and the
// room's conversation gets one READY RECORDING file whose download URL
// serves the bytes, kept under the file's own blob name; egress's original
// is removed; deleting the file removes its blob with nothing left in the
// outbox.
func TestEgressRecordingBecomesAFile(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{})
			egress := egressBlobs{t: t, env: env}
			ctx := t.Context()
			lkServer := rtctest.NewServer(t, roomTestKey, roomTestSecret)
			lk, err := rtc.New(rtc.Config{URL: lkServer.URL, PublicURL: "wss://livekit.example.com",
				APIKey: roomTestKey, APISecret: roomTestSecret, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			log := slog.New(slog.DiscardHandler)
			var wakes atomic.Int32
			rooms := room.NewService(postgres.NewRoomStore(env.db), lk, room.Options{Log: log, RecordingsQueued: func() {
				wakes.Add(1)
				env.wake()
			}})
			t.Cleanup(rooms.Close)
			webhook := NewWebhookHandler(lk, rooms, log, nil)

			owner := env.user(t)
			r, _, err := rooms.CreateRoom(ctx, lkauth.Principal{ID: owner.UUID, Kind: lkauth.KindUser, TokenID: "t", ExpiresAt: time.Now().Add(time.Hour)}, "recorded")
			if err != nil {
				t.Fatal(err)
			}
			source := "recordings/" + r.LiveKitRoom + "/EG_1.mp4"
			data := append([]byte("\x00\x00\x00\x18ftypmp42"), bytes.Repeat([]byte("video"), 4000)...)
			egress.write(source, data)
			info := &livekit.EgressInfo{EgressId: "EG_1", RoomName: r.LiveKitRoom, RoomId: lkServer.RoomSID(r.LiveKitRoom), Status: livekit.EgressStatus_EGRESS_COMPLETE,
				FileResults: []*livekit.FileInfo{{Filename: source, Location: "https://storage.example/" + source, Size: int64(len(data))}}}
			lkServer.AddEgress(info)
			ev := &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "egress_ended", CreatedAt: time.Now().Unix(), EgressInfo: info}
			for range 2 {
				rec := httptest.NewRecorder()
				webhook.ServeHTTP(rec, signedWebhook(t, ev))
				if rec.Code != http.StatusOK {
					t.Fatalf("egress_ended: HTTP %d", rec.Code)
				}
			}

			if n := wakes.Load(); n != 1 {
				t.Errorf("the outbox worker was woken %d times, want once (the redelivery queues nothing)", n)
			}
			c := env.files["connect"]
			var rec *parleyv1.File
			deadline := time.Now().Add(10 * time.Second)
			for rec == nil {
				list, err := c.ListFiles(ctx, as(owner, &parleyv1.ListFilesRequest{ConversationId: r.ConversationID.String()}))
				if err != nil {
					t.Fatal(err)
				}
				switch fs := list.Msg.GetFiles(); {
				case len(fs) > 1:
					t.Fatalf("files = %v, want one recording", fs)
				case len(fs) == 1 && fs[0].GetStatus() == parleyv1.FileStatus_FILE_STATUS_READY:
					rec = fs[0]
				case time.Now().After(deadline):
					t.Fatalf("no READY recording after the webhook: %v", fs)
				default:
					time.Sleep(50 * time.Millisecond)
				}
			}
			if rec.GetKind() != parleyv1.FileKind_FILE_KIND_RECORDING || rec.GetFilename() != "EG_1.mp4" ||
				rec.GetContentType() != "video/mp4" || rec.GetSizeBytes() != int64(len(data)) {
				t.Errorf("recording = %v", rec)
			}
			got, err := c.GetFile(ctx, as(owner, &parleyv1.GetFileRequest{FileId: rec.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			resp, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("download of the recording = %d (%d bytes), want the %d egress wrote", resp.StatusCode, len(body), len(data))
			}
			final := file.BlobName(r.ConversationID, uuid.MustParse(rec.GetId()))
			if _, err := env.blobs.Stat(ctx, final); err != nil {
				t.Errorf("the recording is not under its own blob name %s: %v", final, err)
			}
			deadline = time.Now().Add(10 * time.Second)
			for egress.exists(source) {
				if time.Now().After(deadline) {
					t.Fatalf("egress's original %s is still there", source)
				}
				time.Sleep(50 * time.Millisecond)
			}

			if _, err := c.DeleteFile(ctx, as(owner, &parleyv1.DeleteFileRequest{FileId: rec.GetId()})); err != nil {
				t.Fatal(err)
			}
			waitBlobGone(t, env.blobs, final)
			waitOutboxEmpty(t, env.db)
		})
	}
}

// TestForgedEgressImportsNothing: someone who can sign webhooks (LiveKit's
// development keys are public) claims that egress wrote another user's file
// into their own room. Nothing is imported, the victim's blob is neither
// copied nor deleted, and each refusal is counted; only what LiveKit's API
// confirms, under the room's recording prefix, becomes a file.
func TestForgedEgressImportsNothing(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			var webhook *WebhookHandler
			env := newFileEnv(t, kind, fileEnvOptions{sourceRefused: func() { webhook.RecordingSourceRefused() }})
			egress := egressBlobs{t: t, env: env}
			ctx := t.Context()
			lkServer := rtctest.NewServer(t, roomTestKey, roomTestSecret)
			lk, err := rtc.New(rtc.Config{URL: lkServer.URL, APIKey: roomTestKey, APISecret: roomTestSecret, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			log := slog.New(slog.DiscardHandler)
			roomStore := postgres.NewRoomStore(env.db)
			rooms := room.NewService(roomStore, lk, room.Options{Log: log, RecordingsQueued: env.wake})
			t.Cleanup(rooms.Close)
			webhook = NewWebhookHandler(lk, rooms, log, NewWebhookRefusals(prometheus.NewRegistry()))
			c := env.files["connect"]

			victim := env.user(t)
			victimConv := env.conversation(t, victim)
			secret := []byte("the victim's private notes")
			up, err := c.UploadFile(ctx, as(victim, &parleyv1.UploadFileRequest{ConversationId: victimConv, Filename: "notes.txt", Data: secret}))
			if err != nil {
				t.Fatal(err)
			}
			victimFile := up.Msg.GetFile().GetId()
			victimBlob := file.BlobName(uuid.MustParse(victimConv), uuid.MustParse(victimFile))

			forger := env.user(t)
			r, _, err := rooms.CreateRoom(ctx, lkauth.Principal{ID: forger.UUID, Kind: lkauth.KindUser, TokenID: "t", ExpiresAt: time.Now().Add(time.Hour)}, "mine")
			if err != nil {
				t.Fatal(err)
			}
			sid, prefix := lkServer.RoomSID(r.LiveKitRoom), room.RecordingPrefix(r.LiveKitRoom)
			egressInfo := func(id, roomName string, names ...string) *livekit.EgressInfo {
				info := &livekit.EgressInfo{EgressId: id, RoomName: roomName, RoomId: sid, Status: livekit.EgressStatus_EGRESS_COMPLETE}
				for _, n := range names {
					info.FileResults = append(info.FileResults, &livekit.FileInfo{Filename: n, Size: int64(len(secret))})
				}
				return info
			}
			post := func(what string, info *livekit.EgressInfo) {
				t.Helper()
				ev := &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "egress_ended", CreatedAt: time.Now().Unix(), EgressInfo: info}
				rec := httptest.NewRecorder()
				webhook.ServeHTTP(rec, signedWebhook(t, ev))
				if rec.Code != http.StatusOK {
					t.Fatalf("%s: HTTP %d", what, rec.Code)
				}
			}

			// An egress LiveKit never ran, naming the victim's blob plainly
			// and by a path that climbs out of the room's prefix.
			post("an egress LiveKit never ran", egressInfo("EG_forged", r.LiveKitRoom, victimBlob, prefix+"../../"+victimBlob))
			// Another room's egress, claimed for the forger's room.
			lkServer.AddEgress(egressInfo("EG_theirs", "parley-"+uuid.NewString(), "recordings/theirs.mp4"))
			post("another room's egress", egressInfo("EG_theirs", r.LiveKitRoom, victimBlob))
			// An egress LiveKit ran for the room, but that wrote outside
			// the room's recording prefix.
			lkServer.AddEgress(egressInfo("EG_outside", r.LiveKitRoom, victimBlob))
			post("an egress that wrote outside the prefix", egressInfo("EG_outside", r.LiveKitRoom, victimBlob))
			// A real egress of the room, whose event lies about its file:
			// LiveKit's word is taken.
			real := prefix + "EG_real.mp4"
			data := []byte("\x00\x00\x00\x18ftypmp42 the forger's own recording")
			egress.write(real, data)
			lkServer.AddEgress(egressInfo("EG_real", r.LiveKitRoom, real))
			post("a real egress with a lying event", egressInfo("EG_real", r.LiveKitRoom, victimBlob))
			// An import queued by a forged event before this check, as an
			// older replica would have: the worker refuses its source.
			if _, err := roomStore.ApplyEvent(ctx, room.Event{ID: "EV_old_replica", Kind: room.EventEgressEnded, LiveKitRoom: r.LiveKitRoom, RoomSID: sid,
				Recordings: []room.Recording{{BlobName: victimBlob, Filename: "notes.txt", ContentType: "text/plain", SizeBytes: int64(len(secret))}}}); err != nil {
				t.Fatal(err)
			}
			env.wake()

			deadline := time.Now().Add(10 * time.Second)
			for refusals(t, webhook, "egress_ended", "source_in_file_namespace") == 0 || !readyFiles(t, c, forger, r.ConversationID, 1) {
				if time.Now().After(deadline) {
					t.Fatal("the worker neither imported the real recording nor refused the old replica's import")
				}
				time.Sleep(50 * time.Millisecond)
			}
			list, err := c.ListFiles(ctx, as(forger, &parleyv1.ListFilesRequest{ConversationId: r.ConversationID.String()}))
			if err != nil {
				t.Fatal(err)
			}
			if fs := list.Msg.GetFiles(); len(fs) != 1 || fs[0].GetFilename() != "EG_real.mp4" || fs[0].GetSha256() == hexSHA256(secret) {
				t.Errorf("the forger's files = %v, want only EG_real.mp4", fs)
			}
			for _, f := range list.Msg.GetFiles() {
				got, err := c.GetFile(ctx, as(forger, &parleyv1.GetFileRequest{FileId: f.GetId()}))
				if err != nil {
					t.Fatal(err)
				}
				if _, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil); bytes.Equal(body, secret) || !bytes.Equal(body, data) {
					t.Errorf("the forger's %s serves %q, want the forger's own recording", f.GetFilename(), body)
				}
			}
			if _, err := c.GetFile(ctx, as(forger, &parleyv1.GetFileRequest{FileId: victimFile})); connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("the forger's GetFile of the victim's file: %v, want not_found", err)
			}
			// The victim's file is whole and nothing queued it for deletion.
			got, err := c.GetFile(ctx, as(victim, &parleyv1.GetFileRequest{FileId: victimFile}))
			if err != nil {
				t.Fatal(err)
			}
			if _, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil); !bytes.Equal(body, secret) {
				t.Errorf("the victim's download = %q, want %q", body, secret)
			}
			var queued int
			if err := env.db.QueryRowContext(ctx, "SELECT count(*) FROM blob_deletions WHERE blob_name = ?", victimBlob).Scan(&queued); err != nil || queued != 0 {
				t.Errorf("the victim's blob is queued for deletion %d times (%v)", queued, err)
			}

			for reason, want := range map[string]float64{
				room.RefusedEgressUnconfirmed: 2,
				room.RefusedRecordingLocation: 1,
				"source_in_file_namespace":    1,
			} {
				if got := refusals(t, webhook, "egress_ended", reason); got != want {
					t.Errorf("refusals for %s = %v, want %v", reason, got, want)
				}
			}
		})
	}
}

// readyFiles reports whether owner's conversation conv lists n files, all
// READY.
func readyFiles(t *testing.T, c parleyv1connect.FileServiceClient, owner caller, conv uuid.UUID, n int) bool {
	t.Helper()
	list, err := c.ListFiles(t.Context(), as(owner, &parleyv1.ListFilesRequest{ConversationId: conv.String()}))
	if err != nil {
		t.Fatal(err)
	}
	fs := list.Msg.GetFiles()
	for _, f := range fs {
		if f.GetStatus() != parleyv1.FileStatus_FILE_STATUS_READY {
			return false
		}
	}
	return len(fs) == n
}
