package upstreamoauth

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// template is a configured value compiled once, at provision: its literal
// parts, with Caddy's global placeholders ({env.*}, {file.*}, {system.*},
// {time.*}) already expanded into them, and the keys of its request
// placeholders ({http.*}, and the variables of map and vars), which are
// read for each request. A value that a global placeholder expands to is a
// literal: a secret with braces in it is never read for placeholders.
type template struct {
	raw   string
	parts []templatePart // nil when static
	value string         // the value, when static
}

// templatePart is a literal, or the key of a request placeholder.
type templatePart struct {
	lit string
	key string // non-empty: a request placeholder
}

// dynamic reports whether t has request placeholders.
func (t template) dynamic() bool { return t.parts != nil }

// globalPlaceholder reports whether key names one of Caddy's global
// placeholders, known without a request (caddy.NewReplacer's).
func globalPlaceholder(key string) bool {
	for _, p := range []string{"env.", "file.", "system.", "time."} {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// compileTemplate compiles s, expanding its global placeholders with
// global (caddy.NewReplacer: reading a {file.*} once, now). It scans as
// Caddy's replacer does: \{ and \} are literal braces, a placeholder ends
// at the first unescaped }, and an unclosed { is a literal.
func compileTemplate(s string, global *caddy.Replacer) template {
	t := template{raw: s}
	var lit strings.Builder
	var parts []templatePart
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && (s[i+1] == '{' || s[i+1] == '}') {
			lit.WriteByte(s[i+1])
			i++
			continue
		}
		if c != '{' {
			lit.WriteByte(c)
			continue
		}
		end := closingBrace(s, i+1)
		if end < 0 {
			lit.WriteString(s[i:])
			break
		}
		key := s[i+1 : end]
		if !placeholderName(key) { // JSON, say: literal, as Caddy would leave it
			lit.WriteString(s[i : end+1])
			i = end
			continue
		}
		i = end
		if globalPlaceholder(key) {
			v, _ := global.Get(key)
			lit.WriteString(caddy.ToString(v))
			continue
		}
		if lit.Len() > 0 {
			parts = append(parts, templatePart{lit: lit.String()})
			lit.Reset()
		}
		parts = append(parts, templatePart{key: key})
	}
	if parts == nil {
		t.value = lit.String()
		return t
	}
	if lit.Len() > 0 {
		parts = append(parts, templatePart{lit: lit.String()})
	}
	t.parts = parts
	return t
}

// placeholderName reports whether key can name a placeholder: letters,
// digits and ._-[]/:@~ (the names of Caddy's placeholders, of map's and
// vars' variables, and of headers, cookies and query parameters in them).
// Braces around anything else, such as the JSON of an RFC 9396
// authorization_details param, are literal.
func placeholderName(key string) bool {
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("._-[]/:@~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// requestNamespace reports whether key is one of Caddy's HTTP placeholders
// ({http.*}): known for every request, even when empty. Any other key (a
// variable of map, or braces in a secret) that the request's replacer does
// not know stands as written, as Caddy's ReplaceKnown leaves it.
func requestNamespace(key string) bool { return strings.HasPrefix(key, "http.") }

// closingBrace is the index of the first } at or after from that is not
// escaped, -1 when there is none.
func closingBrace(s string, from int) int {
	for j := from; j < len(s); j++ {
		switch s[j] {
		case '\\':
			if j+1 < len(s) && (s[j+1] == '{' || s[j+1] == '}') {
				j++
			}
		case '}':
			return j
		}
	}
	return -1
}

// requestPlaceholder returns the first request placeholder of s ("" when it
// has none), for errors where none is allowed.
func requestPlaceholder(s string) string {
	for _, p := range compileTemplate(s, caddy.NewEmptyReplacer()).parts {
		if p.key != "" {
			return "{" + p.key + "}"
		}
	}
	return ""
}

// appendValue appends t's value for the request whose replacer is repl:
// each request placeholder's value, as the replacer has it, between the
// literals. A placeholder it has no value for is "" when it is an HTTP
// placeholder, else it stands as written ({name}). Values are appended as they are, never
// read for placeholders again.
func (t template) appendValue(dst []byte, repl *caddy.Replacer) []byte {
	if t.parts == nil {
		return append(dst, t.value...)
	}
	for _, p := range t.parts {
		if p.key == "" {
			dst = append(dst, p.lit...)
			continue
		}
		if v, ok := repl.Get(p.key); ok {
			dst = appendString(dst, v)
		} else if !requestNamespace(p.key) {
			dst = append(append(append(dst, '{'), p.key...), '}')
		}
	}
	return dst
}

// valueFor is t's value for the request whose replacer is repl.
func (t template) valueFor(repl *caddy.Replacer) string {
	if t.parts == nil {
		return t.value
	}
	return string(t.appendValue(nil, repl))
}

// appendString appends v as caddy.ToString would write it, without making
// a string of it when it is one already.
func appendString(dst []byte, v any) []byte {
	switch v := v.(type) {
	case string:
		return append(dst, v...)
	case []byte:
		return append(dst, v...)
	case nil:
		return dst
	}
	return append(dst, caddy.ToString(v)...)
}
