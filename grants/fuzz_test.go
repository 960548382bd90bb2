package grants

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// fuzzSeeds are the providers' samples and hostile answers. The same kinds of
// answer are in testdata/fuzz/FuzzParseToken in the fuzzer's file format.
var fuzzSeeds = []struct {
	body, contentType string
}{
	{oneNCESample, "application/json"},
	{oneNCEExample, "application/json"},
	{oneioSample, "application/json;charset=UTF-8"},
	{oneioDocLiteral, "application/json"},
	{telenorSample, "application/json"},
	{telenorShort, "application/json"},
	{"", "application/json"},
	{"<html><body>Sign in</body></html>", "text/html; charset=utf-8"},
	{`{"token_type":"bearer","expires_in":3600}`, "application/json"},
	{`{"access_token":"abcdefgh\r\nX-Injected: 1","expires_in":60}`, "application/json"},
	{`{"access_token":"abcdefgh\u0000ijkl","expires_in":60}`, "application/json"},
	{`{"access_token":"abcdéfgh","expires_in":60}`, "application/json"},
	{`{"access_token":"abcdefghijkl","token_type":"mac","expires_in":60}`, "application/json"},
	{`{"access_token":"abcdefghijkl","token_type":"abcdefghijkl","expires_in":60}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":"abcdefghijkl"}`, "application/json"},
	{`{"access_token":"0x1.8p+03","expires_in":"-0x1.8p+03"}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":-1}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":0}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":1e-300}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":31622401}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":"NaN"}`, "application/json"},
	{`{"access_token":"abcdefghijkl"}`, "application/json"},
	{`{"access_token":"abcdefghijkl","expires_in":60} trailing`, "application/json"},
	{`{"ACCESS_TOKEN":"abcdefghijkl","access_token":"x y","expires_in":60}`, "application/json"},
}

// errorVocabulary is the fixed text of ParseToken's refusals (and of
// encoding/json's errors, which it quotes). A run of the token that is part
// of this text is the message's own wording, not a leak.
const errorVocabulary = `token response refused (status 200): response body over 1 MiB empty body
body is not a JSON object (content-type none) malformed JSON: no access_token
access_token contains a space contains CR or LF contains a control character
contains a non-ASCII character is longer than 64 KiB token_type is not bearer
expires_in is not a number is not positive is less than a second
is longer than a year no expires_in and no default_ttl (withheld)
json: cannot unmarshal string number bool array object into Go struct field
tokenResponse.access_token tokenResponse.token_type tokenResponse.refresh_token
tokenResponse.expires_in tokenResponse.scope of type string
invalid character looking for beginning of value object key string after
object key:value pair after array element after top-level value
in string literal in string escape code in \u hexadecimal character escape
in numeric literal in literal true (expecting 'r') false null
unexpected end of JSON input`

// inputAccessToken is the access_token that ParseToken reads from body, if
// any: the same decoding, so the same field (case-insensitive, last wins).
func inputAccessToken(body []byte) (string, bool) {
	var v struct {
		AccessToken *string `json:"access_token"`
	}
	_ = json.Unmarshal(bytes.TrimSpace(body), &v) // a type error elsewhere still fills it
	if v.AccessToken == nil {
		return "", false
	}
	return *v.AccessToken, true
}

func FuzzParseToken(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s.body), s.contentType)
	}
	obtained := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		for _, wantType := range []string{"bearer", ""} {
			for _, ttl := range []time.Duration{5 * time.Minute, 0} {
				tok, err := ParseToken(body, contentType, wantType, ttl, obtained)
				if err == nil {
					checkToken(t, tok, wantType, obtained)
					continue
				}
				if tok != nil {
					t.Fatalf("ParseToken returned a token and an error: %v", err)
				}
				var re *ResponseError
				if !errors.As(err, &re) || re.Status != 200 {
					t.Fatalf("error %v (%T) is not a *ResponseError with status 200", err, err)
				}
				if access, ok := inputAccessToken(body); ok {
					msg := err.Error()
					const run = 8
					for i := 0; i+run <= len(access); i++ {
						w := access[i : i+run]
						if strings.Contains(msg, w) && !strings.Contains(errorVocabulary, w) {
							t.Fatalf("error %q shows %q of the access_token %q", msg, w, access)
						}
					}
				}
			}
		}
	})
}

func checkToken(t *testing.T, tok *Token, wantType string, obtained time.Time) {
	t.Helper()
	if tok == nil {
		t.Fatal("ParseToken returned neither a token nor an error")
	}
	if tok.AccessToken == "" {
		t.Fatal("empty AccessToken accepted")
	}
	for i := 0; i < len(tok.AccessToken); i++ {
		if c := tok.AccessToken[i]; c < 0x21 || c > 0x7e {
			t.Fatalf("AccessToken %q has byte %#x outside visible ASCII", tok.AccessToken, c)
		}
	}
	for i := 0; i < len(tok.RefreshToken); i++ {
		if c := tok.RefreshToken[i]; c < 0x21 || c > 0x7e {
			t.Fatalf("RefreshToken %q has byte %#x outside visible ASCII", tok.RefreshToken, c)
		}
	}
	if tok.Lifetime <= 0 || tok.Lifetime > MaxLifetime {
		t.Fatalf("Lifetime %v outside (0, %v]", tok.Lifetime, MaxLifetime)
	}
	if !tok.Obtained.Equal(obtained) {
		t.Fatalf("Obtained = %v, want %v", tok.Obtained, obtained)
	}
	if !tok.Expiry.Equal(obtained.Add(tok.Lifetime)) {
		t.Fatalf("Expiry = %v, want obtained+Lifetime = %v", tok.Expiry, obtained.Add(tok.Lifetime))
	}
	if wantType != "" && tok.TokenType != "" && !strings.EqualFold(tok.TokenType, wantType) {
		t.Fatalf("token_type %q accepted, want %q", tok.TokenType, wantType)
	}
}
