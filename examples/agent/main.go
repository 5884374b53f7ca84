// Command agent is a small Parley agent: the part of a voice agent (a LiveKit
// agent, say) that stores each finished turn of a conversation.
//
// It reads turns from standard input, one per line as "user text<TAB>agent
// text", and saves each with SaveTurn over gRPC, printing the stored seq
// numbers. Configuration comes from the environment:
//
//	PARLEY_URLS             comma-separated base URLs, tried in order (http://localhost:8080)
//	PARLEY_AGENT_KEY        the key from `parley agent-key create --name NAME`
//	PARLEY_CONVERSATION_ID  the conversation to save into (a room's conversation_id)
//
// Try it against `parley dev`:
//
//	printf 'hello\thi there!\n' | PARLEY_AGENT_KEY=... PARLEY_CONVERSATION_ID=... go run ./examples/agent
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
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
	conversationID := getenv("PARLEY_CONVERSATION_ID")
	if conversationID == "" {
		return errors.New("PARLEY_CONVERSATION_ID is not set")
	}
	c, err := NewClient(getenv("PARLEY_AGENT_KEY"), urls, log)
	if err != nil {
		return err
	}

	lines := bufio.NewScanner(in)
	for n := 1; lines.Scan(); n++ {
		if strings.TrimSpace(lines.Text()) == "" {
			continue
		}
		user, assistant, _ := strings.Cut(lines.Text(), "\t")
		// The turn id is fixed before the first try and derived from the
		// input, so retries, and even a second run over the same input,
		// never store the turn twice.
		turnID := fmt.Sprintf("line-%d-%x", n, sha256.Sum256(lines.Bytes()))[:32]
		msgs, replayed, url, err := c.SaveTurn(ctx, conversationID, turnID, user, assistant)
		if err != nil {
			return fmt.Errorf("save turn %s: %w", turnID, err)
		}
		seqs := make([]string, len(msgs))
		for i, m := range msgs {
			seqs[i] = fmt.Sprint(m.GetSeq())
		}
		fmt.Fprintf(out, "saved %s seq %s replayed=%t via %s\n", turnID, strings.Join(seqs, ","), replayed, url)
	}
	return lines.Err()
}
