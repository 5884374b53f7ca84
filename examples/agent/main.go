// Command agent is a small Parley agent: the part of a voice agent (a LiveKit
// agent, say) that restores a conversation's chat context when it starts and
// stores every item of the conversation as it goes.
//
// At start it reads the chat context with GetChatContext. Then it reads
// turns from standard input, one per line as "user text<TAB>agent text", or
// "user text<TAB>agent text<TAB>tool" when the agent calls its scripted tool
// (context_items, which counts the items of its context) before answering.
// It appends each turn's items (user message, function call and its output,
// assistant message) with AppendItems over gRPC, each under a LiveKit-style
// id (item_<12 hex>), and prints the stored message seqs and item seqs.
// Configuration comes from the environment:
//
//	PARLEY_URLS               comma-separated base URLs, tried in order (http://localhost:8080)
//	PARLEY_AGENT_KEY          the key from `parley agent-key create --name NAME`
//	PARLEY_DISPATCH_METADATA  the job's dispatch metadata from Parley's room, as JSON:
//	                          {"conversation_id": "...", "last_seq": N, "agent_metadata": "..."}
//	PARLEY_CONVERSATION_ID    without dispatch metadata, the conversation (a room's conversation_id)
//	PARLEY_LAST_SEQ           without dispatch metadata, where the restore stops (default: the newest item)
//	PARLEY_AGENT_NAME         the name kept on every item (example-agent)
//
// Try it against `parley dev`:
//
//	printf 'hello\thi there!\nhow long is our chat?\tfour items so far.\tcontext_items\n' |
//	  PARLEY_AGENT_KEY=... PARLEY_CONVERSATION_ID=... go run ./examples/agent
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stdin, os.Stdout, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, in io.Reader, out io.Writer, log *slog.Logger) error {
	urls := strings.Split(getenv("PARLEY_URLS"), ",")
	if getenv("PARLEY_URLS") == "" {
		urls = []string{"http://localhost:8080"}
	}
	d, err := dispatchOf(getenv)
	if err != nil {
		return err
	}
	c, err := NewClient(getenv("PARLEY_AGENT_KEY"), urls, log)
	if err != nil {
		return err
	}
	a := &Agent{client: c, conversationID: d.ConversationID, name: getenv("PARLEY_AGENT_NAME"), log: log}
	if a.name == "" {
		a.name = "example-agent"
	}
	if err := a.Restore(ctx, d); err != nil {
		return err
	}

	lines := bufio.NewScanner(in)
	for lines.Scan() {
		if strings.TrimSpace(lines.Text()) == "" {
			continue
		}
		user, rest, _ := strings.Cut(lines.Text(), "\t")
		assistant, tool, _ := strings.Cut(rest, "\t")
		turn, err := a.Turn(ctx, user, assistant, tool)
		if err != nil {
			return err
		}
		var msgSeqs, itemSeqs []string
		for _, it := range turn.Items {
			itemSeqs = append(itemSeqs, fmt.Sprint(it.GetSeq()))
			if it.GetMessageSeq() != 0 {
				msgSeqs = append(msgSeqs, fmt.Sprint(it.GetMessageSeq()))
			}
		}
		fmt.Fprintf(out, "saved %s seq %s items %s replayed=%t via %s\n", turn.ID, strings.Join(msgSeqs, ","), strings.Join(itemSeqs, ","), turn.Replayed, turn.URL)
	}
	return lines.Err()
}

// dispatchOf reads the conversation and restore point: the dispatch
// metadata when the agent runs as a room's job, else the plain variables.
func dispatchOf(getenv func(string) string) (Dispatch, error) {
	var d Dispatch
	if md := getenv("PARLEY_DISPATCH_METADATA"); md != "" {
		if err := json.Unmarshal([]byte(md), &d); err != nil {
			return d, fmt.Errorf("PARLEY_DISPATCH_METADATA: %w", err)
		}
		if d.ConversationID == "" {
			return d, errors.New("PARLEY_DISPATCH_METADATA has no conversation_id")
		}
		return d, nil
	}
	d.ConversationID = getenv("PARLEY_CONVERSATION_ID")
	if d.ConversationID == "" {
		return d, errors.New("neither PARLEY_DISPATCH_METADATA nor PARLEY_CONVERSATION_ID is set")
	}
	if s := getenv("PARLEY_LAST_SEQ"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return d, fmt.Errorf("PARLEY_LAST_SEQ %q is not a seq", s)
		}
		d.LastSeq = n
	}
	return d, nil
}
