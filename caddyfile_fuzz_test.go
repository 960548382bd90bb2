package upstreamoauth

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzUnmarshalCaddyfile feeds arbitrary text to the directive's parser:
// it must never panic; a block it accepts must resolve at provision time
// without panicking and marshal to JSON that reads back the same.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	files, _ := filepath.Glob("testdata/adapt/*.caddytest")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		text, _, _ := strings.Cut(string(data), "----------")
		for _, part := range strings.Split(text, "upstream_oauth")[1:] {
			end := strings.Index(part, "\n\t}")
			if end < 0 {
				end = strings.Index(part, "\n\t\t}")
			}
			if end > 0 {
				f.Add("upstream_oauth" + part[:end] + "\n}")
			}
		}
	}
	f.Add("upstream_oauth 1nce")
	f.Add("upstream_oauth {\n\ttls {\n\t\tca a b\n\t}\n}")
	f.Add("upstream_oauth telenor {\n\tclient_id {env.A}\n\tclient_secret {env.B}\n\tusername u\n\tpassword p\n\trenew_on 401 403\n\theader X-Token\n}")
	f.Add("upstream_oauth {\n\ttoken_url https://a.example/{env.X}\n\tclient_id a\n\tclient_secret b\n\trefresh_ahead 12.5%\n}")
	f.Fuzz(func(t *testing.T, input string) {
		d := caddyfile.NewTestDispenser(input)
		if !d.Next() {
			return // no tokens: Caddy never calls the parser without its directive
		}
		d.Reset()
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(d); err != nil {
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Fatalf("error without file and line: %v", err)
			}
			return
		}
		repl := caddy.NewEmptyReplacer()
		_, _ = h.settings(repl) // unknown placeholders stay: may fail, must not panic
		data, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		var back Handler
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		again, _ := json.Marshal(&back)
		if string(again) != string(data) {
			t.Fatalf("JSON does not round-trip:\n%s\n%s", data, again)
		}
	})
}
