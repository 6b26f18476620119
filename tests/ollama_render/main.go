// Renders conversations through a Go text/template the way Ollama's server feeds its
// model templates, so tests can compare a Modelfile TEMPLATE with the model's Jinja
// template. Written for edgeqwen's tests from Ollama's documented template data
// (template/template.go: Values, the collated messages, `json` and the other template
// functions, missingkey=zero); it is a model of that interface, not Ollama's code.
//
// stdin:  {"template": "...", "cases": [{"messages": [...], "tools": [...], "think": null|bool}]}
// stdout: {"renders": ["..."], "vars": [...], "thinking_tags": ["<think>", "</think>"]}
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type Args map[string]any

func (a Args) String() string {
	if a == nil {
		return "{}"
	}
	b, _ := json.Marshal(map[string]any(a))
	return string(b)
}

type ToolCallFunction struct {
	Index     int
	Name      string
	Arguments Args
}

type ToolCall struct {
	ID       string
	Function ToolCallFunction
}

type Message struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []ToolCall
	ToolName   string
	ToolCallID string
}

type Parameters struct {
	Type       string         `json:"type"`
	Defs       any            `json:"$defs,omitempty"`
	Items      any            `json:"items,omitempty"`
	Required   []string       `json:"required,omitempty"`
	Properties map[string]any `json:"properties"`
}

type Function struct {
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Parameters  Parameters `json:"parameters"`
}

type Tool struct {
	Type     string   `json:"type"`
	Items    any      `json:"items,omitempty"`
	Function Function `json:"function"`
}

func (t Tool) String() string {
	b, _ := json.Marshal(t)
	return string(b)
}

type inMessage struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking"`
	ToolName  string `json:"tool_name"`
	ToolCalls []struct {
		Function struct {
			Name      string         `json:"name"`
			Arguments map[string]any `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

type inCase struct {
	Messages []inMessage `json:"messages"`
	Tools    []Tool      `json:"tools"`
	Think    *bool       `json:"think"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":      func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate":    func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
	"toTypeScriptType": func(v any) string { return "any" },
}

// collate joins all system messages into System and merges consecutive messages of the
// same role (tool results stay separate), as Ollama does before executing a template.
func collate(in []inMessage) (string, []*Message) {
	var system []string
	var out []*Message
	for _, m := range in {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
			continue
		}
		msg := &Message{Role: m.Role, Content: m.Content, Thinking: m.Thinking, ToolName: m.ToolName}
		for i, c := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, ToolCall{Function: ToolCallFunction{
				Index: i, Name: c.Function.Name, Arguments: Args(c.Function.Arguments)}})
		}
		out = append(out, msg)
	}
	return strings.Join(system, "\n\n"), out
}

func walk(n parse.Node, visit func(parse.Node, []parse.Node), stack []parse.Node) {
	if n == nil {
		return
	}
	visit(n, stack)
	stack = append(stack, n)
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			walk(c, visit, stack)
		}
	case *parse.IfNode:
		walkBranch(&x.BranchNode, visit, stack)
	case *parse.RangeNode:
		walkBranch(&x.BranchNode, visit, stack)
	case *parse.WithNode:
		walkBranch(&x.BranchNode, visit, stack)
	case *parse.ActionNode:
		walk(x.Pipe, visit, stack)
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			walk(c, visit, stack)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			walk(a, visit, stack)
		}
	}
}

func walkBranch(b *parse.BranchNode, visit func(parse.Node, []parse.Node), stack []parse.Node) {
	walk(b.Pipe, visit, stack)
	if b.List != nil {
		walk(b.List, visit, stack)
	}
	if b.ElseList != nil {
		walk(b.ElseList, visit, stack)
	}
}

// fields lists the lower-cased field names the template uses (Ollama derives a model's
// tools capability from "tools").
func fields(root parse.Node) []string {
	set := map[string]bool{}
	walk(root, func(n parse.Node, _ []parse.Node) {
		if f, ok := n.(*parse.FieldNode); ok {
			for _, id := range f.Ident {
				set[strings.ToLower(id)] = true
			}
		}
	}, nil)
	var out []string
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// thinkingTags finds `.Thinking` printed inside a range over .Messages and returns the
// text that opens and closes the list around it: Ollama's signal that a template
// supports thinking, and the tags it splits the model's output on.
func thinkingTags(root parse.Node) [2]string {
	var tags [2]string
	walk(root, func(n parse.Node, stack []parse.Node) {
		f, ok := n.(*parse.FieldNode)
		if !ok || len(f.Ident) == 0 || f.Ident[0] != "Thinking" {
			return
		}
		inMessages := false
		for i := len(stack) - 1; i >= 0; i-- {
			if r, ok := stack[i].(*parse.RangeNode); ok {
				walk(r.Pipe, func(n parse.Node, _ []parse.Node) {
					if f, ok := n.(*parse.FieldNode); ok && f.Ident[0] == "Messages" {
						inMessages = true
					}
				}, nil)
				break
			}
		}
		if !inMessages {
			return
		}
		for i := len(stack) - 1; i >= 0; i-- {
			if l, ok := stack[i].(*parse.ListNode); ok {
				if t, ok := l.Nodes[0].(*parse.TextNode); ok {
					tags[0] = strings.TrimSpace(t.String())
				}
				if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
					tags[1] = strings.TrimSpace(t.String())
				}
				break
			}
		}
	}, nil)
	return tags
}

func main() {
	var in struct {
		Template string   `json:"template"`
		Cases    []inCase `json:"cases"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(1)
	}
	renders := []string{}
	for i, c := range in.Cases {
		system, messages := collate(c.Messages)
		var b strings.Builder
		err := tmpl.Execute(&b, map[string]any{
			"System":     system,
			"Messages":   messages,
			"Tools":      c.Tools,
			"Response":   "",
			"Think":      c.Think != nil && *c.Think,
			"ThinkLevel": "",
			"IsThinkSet": c.Think != nil,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "case %d: %v\n", i, err)
			os.Exit(1)
		}
		renders = append(renders, b.String())
	}
	tags := thinkingTags(tmpl.Root)
	out, _ := json.Marshal(map[string]any{
		"renders": renders, "vars": fields(tmpl.Root), "thinking_tags": tags[:],
	})
	os.Stdout.Write(out)
}
