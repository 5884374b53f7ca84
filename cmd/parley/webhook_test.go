package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/livekit/protocol/livekit"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/gen/parley/v1/parleyv1connect"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
	"github.com/parley-dev/parley/internal/testenv"
)

// TestServeRefusesToStartWithoutLiveKitKeys: with LiveKit's public
// development keys as a fallback anyone could sign webhooks, so the binary
// stops with one line naming both variables and exit code 2.
func TestServeRefusesToStartWithoutLiveKitKeys(t *testing.T) {
	bin := buildBinary(t)
	full := baseEnv(t, "postgres://127.0.0.1:1/unused")
	// An override of "" leaves the variable out.
	for name, override := range map[string]map[string]string{
		"neither":   {"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": ""},
		"no key":    {"LIVEKIT_API_KEY": ""},
		"no secret": {"LIVEKIT_API_SECRET": ""},
		"blank":     {"LIVEKIT_API_KEY": " ", "LIVEKIT_API_SECRET": " "},
	} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(bin, "serve")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			for k, v := range full {
				if o, ok := override[k]; ok {
					v = o
				}
				if v != "" {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
			}
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("serve without LiveKit keys: %v, want exit code 2; stderr:\n%s", err, stderr.String())
			}
			out := stderr.String()
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "parley: config: LIVEKIT_API_") ||
				!strings.Contains(out, "LIVEKIT_API_KEY and LIVEKIT_API_SECRET") {
				t.Errorf("stderr %q, want one line naming LIVEKIT_API_KEY and LIVEKIT_API_SECRET", out)
			}
		})
	}
}

// TestForgedWebhooksChangeNothing runs serve with a fake LiveKit and posts,
// signed with the configured secret as a holder of it could, an egress_ended
// that names another user's file and a room_finished with another room's
// sid. Neither changes anything; both refusals are counted on /metrics; a
// recording that LiveKit confirms and that lies under its room's prefix is
// imported, and LiveKit's sid from CreateRoom is what room_finished must
// carry.
func TestForgedWebhooksChangeNothing(t *testing.T) {
	lk := rtctest.NewServer(t, testLiveKitKey, testLiveKitSecret)
	env := baseEnv(t, testenv.DatabaseURL(t))
	env["LIVEKIT_URL"] = lk.URL
	env["PARLEY_PUBLIC_URL"] = "http://" + env["PARLEY_HTTP_ADDR"]
	s := startServer(t, env)
	ctx := context.Background()
	auth := parleyv1connect.NewAuthServiceClient(http.DefaultClient, s.base)
	rooms := parleyv1connect.NewRoomServiceClient(http.DefaultClient, s.base)
	convs := parleyv1connect.NewConversationServiceClient(http.DefaultClient, s.base)
	files := parleyv1connect.NewFileServiceClient(http.DefaultClient, s.base)
	register := func(email string) string {
		t.Helper()
		res, err := auth.Register(ctx, connect.NewRequest(&parleyv1.RegisterRequest{Email: email, Password: "correct horse battery"}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetTokens().GetAccessToken()
	}
	download := func(token, fileID string) []byte {
		t.Helper()
		got, err := files.GetFile(ctx, bearer(connect.NewRequest(&parleyv1.GetFileRequest{FileId: fileID}), token))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(got.Msg.GetDownloadUrl())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("download %s: HTTP %d, %v", fileID, resp.StatusCode, err)
		}
		return b
	}
	post := func(what string, ev *livekit.WebhookEvent) {
		t.Helper()
		req, err := rtctest.WebhookRequest(ctx, s.base+"/livekit/webhook", testLiveKitKey, testLiveKitSecret, ev)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: HTTP %d", what, resp.StatusCode)
		}
	}

	victim := register("victim@example.com")
	conv, err := convs.CreateConversation(ctx, bearer(connect.NewRequest(&parleyv1.CreateConversationRequest{Title: "private"}), victim))
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("the victim's private notes")
	up, err := files.UploadFile(ctx, bearer(connect.NewRequest(&parleyv1.UploadFileRequest{
		ConversationId: conv.Msg.GetConversation().GetId(), Filename: "notes.txt", ContentType: "text/plain", Data: secret}), victim))
	if err != nil {
		t.Fatal(err)
	}
	victimFile := up.Msg.GetFile()
	victimBlob := victimFile.GetConversationId() + "/" + victimFile.GetId()
	victimRoom, err := rooms.CreateRoom(ctx, bearer(connect.NewRequest(&parleyv1.CreateRoomRequest{Name: "victim's"}), victim))
	if err != nil {
		t.Fatal(err)
	}

	forger := register("forger@example.com")
	created, err := rooms.CreateRoom(ctx, bearer(connect.NewRequest(&parleyv1.CreateRoomRequest{Name: "mine"}), forger))
	if err != nil {
		t.Fatal(err)
	}
	own := created.Msg.GetRoom()
	ownSID := lk.RoomSID(own.GetLivekitRoom())

	post("forged egress_ended", &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "egress_ended", CreatedAt: time.Now().Unix(),
		EgressInfo: &livekit.EgressInfo{EgressId: "EG_forged", RoomName: own.GetLivekitRoom(), RoomId: ownSID, Status: livekit.EgressStatus_EGRESS_COMPLETE,
			FileResults: []*livekit.FileInfo{{Filename: victimBlob, Size: int64(len(secret))}}}})
	finished := func(sid string) *livekit.WebhookEvent {
		return &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "room_finished", CreatedAt: time.Now().Unix(),
			Room: &livekit.Room{Name: victimRoom.Msg.GetRoom().GetLivekitRoom(), Sid: sid}}
	}
	post("room_finished under the forger's sid", finished(ownSID))
	victimStatus := func() parleyv1.RoomStatus {
		got, err := rooms.GetRoom(ctx, bearer(connect.NewRequest(&parleyv1.GetRoomRequest{RoomId: victimRoom.Msg.GetRoom().GetId()}), victim))
		if err != nil {
			t.Fatal(err)
		}
		return got.Msg.GetRoom().GetStatus()
	}
	if st := victimStatus(); st != parleyv1.RoomStatus_ROOM_STATUS_ACTIVE {
		t.Errorf("the victim's room after a room_finished with its name and another sid: %v, want active", st)
	}

	// A recording LiveKit confirms, under the room's prefix: imported. The
	// worker takes imports in order, so once it is in, a forged one
	// queued before it would be too.
	real := "recordings/" + own.GetLivekitRoom() + "/EG_real.mp4"
	data := []byte("\x00\x00\x00\x18ftypmp42 the forger's own recording")
	path := filepath.Join(env["PARLEY_BLOB_DIR"], filepath.FromSlash(real))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	info := &livekit.EgressInfo{EgressId: "EG_real", RoomName: own.GetLivekitRoom(), RoomId: ownSID, Status: livekit.EgressStatus_EGRESS_COMPLETE,
		FileResults: []*livekit.FileInfo{{Filename: real, Size: int64(len(data))}}}
	lk.AddEgress(info)
	post("confirmed egress_ended", &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "egress_ended", CreatedAt: time.Now().Unix(), EgressInfo: info})
	var list []*parleyv1.File
	for deadline := time.Now().Add(15 * time.Second); ; {
		res, err := files.ListFiles(ctx, bearer(connect.NewRequest(&parleyv1.ListFilesRequest{ConversationId: own.GetConversationId()}), forger))
		if err != nil {
			t.Fatal(err)
		}
		list = res.Msg.GetFiles()
		if len(list) > 0 && list[0].GetStatus() == parleyv1.FileStatus_FILE_STATUS_READY || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(list) != 1 || list[0].GetFilename() != "EG_real.mp4" {
		t.Errorf("the forger's conversation holds %v, want only EG_real.mp4", list)
	}
	for _, f := range list {
		if b := download(forger, f.GetId()); bytes.Equal(b, secret) || !bytes.Equal(b, data) {
			t.Errorf("the forger's %s serves %q, want the forger's own recording", f.GetFilename(), b)
		}
	}
	if b := download(victim, victimFile.GetId()); !bytes.Equal(b, secret) {
		t.Errorf("the victim's file now serves %q, want %q", b, secret)
	}

	resp, err := http.Get(s.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`parley_livekit_webhook_refused_total{event="egress_ended",reason="egress_unconfirmed"} 1`,
		`parley_livekit_webhook_refused_total{event="room_finished",reason="room_mismatch"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Parley kept the sid LiveKit answered CreateRoom with: under it, the
	// room ends.
	post("room_finished under the room's sid", finished(lk.RoomSID(victimRoom.Msg.GetRoom().GetLivekitRoom())))
	if st := victimStatus(); st != parleyv1.RoomStatus_ROOM_STATUS_ENDED {
		t.Errorf("the victim's room after its own room_finished: %v, want ended", st)
	}
}
