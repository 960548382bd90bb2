package upstreamoauth

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of the golden adapt tests")

// TestAdapt adapts each testdata/adapt/*.caddytest Caddyfile (the part above
// the ---------- line) and compares the JSON with the part below it.
func TestAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.caddytest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfileText, expected, ok := strings.Cut(string(data), "----------\n")
			if !ok {
				t.Fatalf("%s: no ---------- separator", file)
			}
			if *update {
				caddyfileText = strings.TrimSpace(string(caddyfile.Format([]byte(caddyfileText)))) + "\n"
				adapted := adaptForUpdate(t, caddyfileText)
				if err := os.WriteFile(file, []byte(caddyfileText+"----------\n"+adapted), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !caddytest.CompareAdapt(t, file, caddyfileText, "caddyfile", strings.TrimSuffix(expected, "\n")) {
				t.Errorf("%s: adapted JSON differs", file)
			}
		})
	}
}

func adaptForUpdate(t *testing.T, text string) string {
	t.Helper()
	out, _, err := caddyfile.Adapter{ServerType: httpServerType()}.Adapt([]byte(text), nil)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	return indentJSON(t, out) + "\n"
}
