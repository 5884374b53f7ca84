package rpc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/conversation"
	"github.com/parley-dev/parley/internal/file"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// markdownExport is file.Markdown's transcript told by the chat items: the
// messages are items too, so they come in order among the tool calls,
// handoffs and config updates between them.
type markdownExport struct{ file.Markdown }

var _ file.ItemExporter = markdownExport{}

// Messages implements file.ItemExporter: the items hold the messages.
func (markdownExport) Messages() bool { return false }

// Item implements file.ItemExporter.
func (markdownExport) Item(w io.Writer, it conversation.Item) error {
	ci, err := chatItemFromPayload(it)
	if err != nil {
		return err
	}
	return writeMarkdownItem(w, it.Seq, it.StoredAt, ci)
}

// writeMarkdownItem writes one chat item of a Markdown export, in the
// layout of the export's messages: a rule, a bold header with the item's
// time and seq, then its body. Tool arguments and outputs are fenced code
// (arguments that are JSON indented); an interrupted message is marked in
// its header. storedAt stands in for an item without its own created_at.
func writeMarkdownItem(w io.Writer, seq int64, storedAt time.Time, ci *parleyv1.ChatContext_ChatItem) error {
	var (
		head string
		at   *timestamppb.Timestamp
		body strings.Builder
	)
	switch it := ci.GetItem().(type) {
	case *parleyv1.ChatContext_ChatItem_Message:
		m := it.Message
		head, at = "**"+chatRoleName(m.GetRole())+"**", m.GetCreatedAt()
		body.WriteString(markdownContent(m.GetContent()))
		if m.GetInterrupted() {
			head += " · *interrupted*"
		}
	case *parleyv1.ChatContext_ChatItem_FunctionCall:
		c := it.FunctionCall
		head, at = "**Tool call**", c.GetCreatedAt()
		fmt.Fprintf(&body, "%s (call %s) with arguments:\n\n%s", codeSpan(c.GetName()), codeSpan(c.GetCallId()), fenced(indentJSON(c.GetArguments()), "json"))
	case *parleyv1.ChatContext_ChatItem_FunctionCallOutput:
		o := it.FunctionCallOutput
		head, at = "**Tool output**", o.GetCreatedAt()
		verb := "returned"
		if o.GetIsError() {
			head, verb = "**Tool error**", "failed with"
		}
		fmt.Fprintf(&body, "%s (call %s) %s:\n\n%s", codeSpan(o.GetName()), codeSpan(o.GetCallId()), verb, fenced(o.GetOutput(), ""))
	case *parleyv1.ChatContext_ChatItem_AgentHandoff:
		h := it.AgentHandoff
		head, at = "**Agent handoff**", h.GetCreatedAt()
		if h.OldAgentId != nil {
			fmt.Fprintf(&body, "From %s to %s.", codeSpan(h.GetOldAgentId()), codeSpan(h.GetNewAgentId()))
		} else {
			fmt.Fprintf(&body, "To %s.", codeSpan(h.GetNewAgentId()))
		}
	case *parleyv1.ChatContext_ChatItem_AgentConfigUpdate:
		u := it.AgentConfigUpdate
		head, at = "**Agent config update**", u.GetCreatedAt()
		var parts []string
		if u.Instructions != nil {
			parts = append(parts, "Instructions:\n\n"+quoted(u.GetInstructions()))
		}
		if u.GetHasToolsAdded() || len(u.GetToolsAdded()) > 0 {
			parts = append(parts, "Tools added: "+codeList(u.GetToolsAdded()))
		}
		if u.GetHasToolsRemoved() || len(u.GetToolsRemoved()) > 0 {
			parts = append(parts, "Tools removed: "+codeList(u.GetToolsRemoved()))
		}
		if len(parts) == 0 {
			parts = append(parts, "*(no change)*")
		}
		body.WriteString(strings.Join(parts, "\n\n"))
	default:
		head = "**Unknown item**"
	}
	t := storedAt
	if at != nil {
		t = at.AsTime()
	}
	_, err := fmt.Fprintf(w, "\n---\n\n%s · %s · #%d\n\n%s\n", head, t.UTC().Format(time.RFC3339), seq, body.String())
	return err
}

func chatRoleName(r parleyv1.ChatRole) string {
	switch r {
	case parleyv1.ChatRole_CHAT_ROLE_USER:
		return "User"
	case parleyv1.ChatRole_CHAT_ROLE_ASSISTANT:
		return "Assistant"
	case parleyv1.ChatRole_CHAT_ROLE_SYSTEM:
		return "System"
	case parleyv1.ChatRole_CHAT_ROLE_DEVELOPER:
		return "Developer"
	default:
		return "Unknown"
	}
}

// markdownContent is a message's content as the transcript shows it: its
// text as written, an image as a placeholder naming it (a data URL could be
// megabytes), cache breakpoints not at all.
func markdownContent(content []*parleyv1.ChatMessage_ChatContent) string {
	var parts []string
	for _, c := range content {
		switch p := c.GetPayload().(type) {
		case *parleyv1.ChatMessage_ChatContent_Text:
			parts = append(parts, p.Text)
		case *parleyv1.ChatMessage_ChatContent_Image:
			if img := p.Image.GetImage(); strings.HasPrefix(img, "http://") || strings.HasPrefix(img, "https://") {
				parts = append(parts, "[image]("+img+")")
			} else {
				parts = append(parts, "*[image]*")
			}
		}
	}
	if len(parts) == 0 {
		return "*(no text)*"
	}
	return strings.Join(parts, "\n\n")
}

// indentJSON indents tool arguments that are JSON, for reading; anything
// else is shown as it is.
func indentJSON(s string) string {
	var b bytes.Buffer
	if err := json.Indent(&b, []byte(s), "", "  "); err != nil {
		return s
	}
	return b.String()
}

// fenced is s as a fenced code block whose fence is longer than any run of
// backticks in s, so no content can close it early.
func fenced(s, lang string) string {
	fence := strings.Repeat("`", max(3, longestRun(s, '`')+1))
	return fence + lang + "\n" + strings.TrimSuffix(s, "\n") + "\n" + fence
}

// codeSpan is s as inline code on one line, delimited by more backticks
// than any run in it; "" is shown as an empty marker.
func codeSpan(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "*(none)*"
	}
	ticks := strings.Repeat("`", longestRun(s, '`')+1)
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") {
		s = " " + s + " "
	}
	return ticks + s + ticks
}

func codeList(names []string) string {
	if len(names) == 0 {
		return "*(none)*"
	}
	spans := make([]string, len(names))
	for i, n := range names {
		spans[i] = codeSpan(n)
	}
	return strings.Join(spans, ", ")
}

// quoted is s as a Markdown block quote, line by line.
func quoted(s string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight("> "+l, " ")
	}
	return strings.Join(lines, "\n")
}

func longestRun(s string, c byte) int {
	best, n := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			n++
			best = max(best, n)
		} else {
			n = 0
		}
	}
	return best
}
