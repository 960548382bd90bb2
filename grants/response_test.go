package grants

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Provider samples, as the providers document them.
const (
	// 1NCE's OpenAPI schema (Bearer_Token_200): lowercase bearer, numeric
	// expires_in, status_code, userId and scope.
	oneNCESample = `{"status_code":200,"access_token":"eyJpZHRva2V.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl","token_type":"bearer","expires_in":3600,"userId":"user","scope":"all"}`
	// 1NCE's OpenAPI example, with its user_id and "score".
	oneNCEExample = `{"status_code":200,"access_token":"eyJpzhr...","token_type":"bearer","expires_in":3600,"user_id":"user","score":"all"}`
	// ONEiO's example, with a real-looking token in place of "TOKEN GOES HERE".
	oneioSample = "{ \n  \"access_token\": \"eyJhbGciOiJSUzI1NiJ9.b25laW8.c2ln\", \n  \"scope\": \"ROLE_INTEGRATION\", \n  \"token_type\": \"Bearer\", \n  \"expires_in\": 3599 \n  }"
	// ONEiO's example as printed: its placeholder token has spaces.
	oneioDocLiteral = "{ \n  \"access_token\": \"TOKEN GOES HERE\", \n  \"scope\": \"ROLE_INTEGRATION\", \n  \"token_type\": \"Bearer\", \n  \"expires_in\": 3599 \n  }"
	// Telenor's response example: expires_in as a string, refresh_token.
	telenorSample = `{
  "access_token": "Iu25QXBwbGbljYXRpzQHRIuYlbGVub329XXQ3tOnMY3BRo0QyVFJUiN",
  "expires_in": "3600",
  "token_type": "Bearer",
  "refresh_token": "9XXQ3tOnMY3BRo0QyVFJUiNIu25QXBwbGbRIuYlbGVub32ljYXRpzQH"
}`
	// Telenor's short example: no token_type.
	telenorShort = `{"access_token" : "4P....uY", "expires_in" : 3599}`
)

var obtainedAt = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func TestParseTokenAccepted(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		ct         string
		wantType   string
		defaultTTL time.Duration
		want       Token // AccessToken, TokenType, RefreshToken, Scope, Lifetime
	}{
		{"1nce sample", oneNCESample, "application/json", "bearer", 5 * time.Minute,
			Token{AccessToken: "eyJpZHRva2V.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl", TokenType: "bearer", Scope: "all", Lifetime: time.Hour}},
		{"1nce doc example", oneNCEExample, "application/json", "bearer", 5 * time.Minute,
			Token{AccessToken: "eyJpzhr...", TokenType: "bearer", Lifetime: time.Hour}},
		{"oneio sample", oneioSample, "application/json;charset=UTF-8", "bearer", 5 * time.Minute,
			Token{AccessToken: "eyJhbGciOiJSUzI1NiJ9.b25laW8.c2ln", TokenType: "Bearer", Scope: "ROLE_INTEGRATION", Lifetime: 3599 * time.Second}},
		{"telenor sample, expires_in string, refresh_token kept", telenorSample, "application/json", "bearer", 5 * time.Minute,
			Token{AccessToken: "Iu25QXBwbGbljYXRpzQHRIuYlbGVub329XXQ3tOnMY3BRo0QyVFJUiN", TokenType: "Bearer",
				RefreshToken: "9XXQ3tOnMY3BRo0QyVFJUiNIu25QXBwbGbRIuYlbGVub32ljYXRpzQH", Lifetime: time.Hour}},
		{"telenor short, no token_type", telenorShort, "application/json", "bearer", 5 * time.Minute,
			Token{AccessToken: "4P....uY", Lifetime: 3599 * time.Second}},
		{"token_type with a trailing space", `{"access_token":"abc","token_type":"Bearer ","expires_in":60}`, "", "bearer", 0,
			Token{AccessToken: "abc", TokenType: "Bearer", Lifetime: time.Minute}},
		{"UTF-8 byte order mark before the body", "\xef\xbb\xbf" + `{"access_token":"abc","token_type":"bearer","expires_in":60}`, "application/json", "bearer", 0,
			Token{AccessToken: "abc", TokenType: "bearer", Lifetime: time.Minute}},
		{"token_type upper case", `{"access_token":"abc","token_type":"BEARER","expires_in":60}`, "", "bearer", 0,
			Token{AccessToken: "abc", TokenType: "BEARER", Lifetime: time.Minute}},
		{"token_type mixed case", `{"access_token":"abc","token_type":"bEaReR","expires_in":60}`, "", "Bearer", 0,
			Token{AccessToken: "abc", TokenType: "bEaReR", Lifetime: time.Minute}},
		{"token_type empty string counts as absent", `{"access_token":"abc","token_type":"","expires_in":60}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"token_type null counts as absent", `{"access_token":"abc","token_type":null,"expires_in":60}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"other scheme when header names it", `{"access_token":"abc","token_type":"dpop","expires_in":60}`, "", "DPoP", 0,
			Token{AccessToken: "abc", TokenType: "dpop", Lifetime: time.Minute}},
		{"any token_type when none is required", `{"access_token":"abc","token_type":"mac","expires_in":60}`, "", "", 0,
			Token{AccessToken: "abc", TokenType: "mac", Lifetime: time.Minute}},
		{"missing expires_in uses default_ttl", `{"access_token":"abc","token_type":"bearer"}`, "", "bearer", 7 * time.Minute,
			Token{AccessToken: "abc", TokenType: "bearer", Lifetime: 7 * time.Minute}},
		{"null expires_in uses default_ttl", `{"access_token":"abc","expires_in":null}`, "", "bearer", 7 * time.Minute,
			Token{AccessToken: "abc", Lifetime: 7 * time.Minute}},
		{"expires_in string with spaces", `{"access_token":"abc","expires_in":" 3600 "}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Hour}},
		{"expires_in float", `{"access_token":"abc","expires_in":3600.0}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Hour}},
		{"expires_in exponent", `{"access_token":"abc","expires_in":3.6e3}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Hour}},
		{"expires_in one second", `{"access_token":"abc","expires_in":1}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Second}},
		{"expires_in 365 days", `{"access_token":"abc","expires_in":31536000}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: 365 * 24 * time.Hour}},
		{"expires_in exactly MaxLifetime", `{"access_token":"abc","expires_in":31622400}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: MaxLifetime}},
		{"scope as a list", `{"access_token":"abc","expires_in":60,"scope":["read","write"]}`, "", "bearer", 0,
			Token{AccessToken: "abc", Scope: "read write", Lifetime: time.Minute}},
		{"scope with a control character is sanitized", `{"access_token":"abc","expires_in":60,"scope":"a\nb"}`, "", "bearer", 0,
			Token{AccessToken: "abc", Scope: "a?b", Lifetime: time.Minute}},
		{"scope of another type is ignored", `{"access_token":"abc","expires_in":60,"scope":7}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"unsafe refresh_token dropped", `{"access_token":"abc","expires_in":60,"refresh_token":"r t"}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"extra fields of any shape", `{"access_token":"abc","expires_in":60,"ext":{"a":[1,2,{"b":null}]},"status_code":200,"n":1e999}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"all visible ASCII in the token", `{"access_token":"!#$%&'()*+,-./09:;<=>?@AZ[\\]^_` + "`" + `az{|}~\"","expires_in":60}`, "", "bearer", 0,
			Token{AccessToken: `!#$%&'()*+,-./09:;<=>?@AZ[\]^_` + "`" + `az{|}~"`, Lifetime: time.Minute}},
		{"escaped token", `{"access_token":"\u0061\u0062c","expires_in":60}`, "", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"surrounding whitespace, text/plain content type", "\r\n\t " + `{"access_token":"abc","expires_in":60}` + "\n\n", "text/plain", "bearer", 0,
			Token{AccessToken: "abc", Lifetime: time.Minute}},
		{"field names in other case", `{"Access_Token":"abc","Expires_In":60,"Token_Type":"Bearer"}`, "", "bearer", 0,
			Token{AccessToken: "abc", TokenType: "Bearer", Lifetime: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ParseToken([]byte(tt.body), tt.ct, tt.wantType, tt.defaultTTL, obtainedAt)
			if err != nil {
				t.Fatalf("ParseToken() = %v", err)
			}
			if tok.AccessToken != tt.want.AccessToken || tok.TokenType != tt.want.TokenType ||
				tok.RefreshToken != tt.want.RefreshToken || tok.Scope != tt.want.Scope || tok.Lifetime != tt.want.Lifetime {
				t.Errorf("ParseToken() = {%q %q %q %q %v}, want {%q %q %q %q %v}",
					tok.AccessToken, tok.TokenType, tok.RefreshToken, tok.Scope, tok.Lifetime,
					tt.want.AccessToken, tt.want.TokenType, tt.want.RefreshToken, tt.want.Scope, tt.want.Lifetime)
			}
			if !tok.Obtained.Equal(obtainedAt) || !tok.Expiry.Equal(obtainedAt.Add(tt.want.Lifetime)) {
				t.Errorf("Obtained %v, Expiry %v; want %v, %v", tok.Obtained, tok.Expiry, obtainedAt, obtainedAt.Add(tt.want.Lifetime))
			}
		})
	}
}

// secretTok is the token in refused answers; no error may show it.
const secretTok = "SECRETTOKENabc123xyz"

// leakedRun returns a run of 8 or more bytes of token that msg contains, or "".
func leakedRun(msg, token string) string {
	const run = 8
	for i := 0; i+run <= len(token); i++ {
		if strings.Contains(msg, token[i:i+run]) {
			return token[i : i+run]
		}
	}
	return ""
}

func TestParseTokenRefused(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		ct         string
		wantType   string
		defaultTTL time.Duration
		wantReason string
	}{
		{"empty 200 body", "", "application/json", "bearer", time.Minute, "empty body"},
		{"whitespace body", " \r\n\t ", "application/json", "bearer", time.Minute, "empty body"},
		{"HTML 200 (a login page)", "<!DOCTYPE html><html><body>Sign in " + secretTok + "</body></html>", "text/html; charset=utf-8", "bearer", time.Minute, "body is not a JSON object (content-type text/html)"},
		{"plain text without content type", "access_token=" + secretTok, "", "bearer", time.Minute, "body is not a JSON object (content-type none)"},
		{"JSON array", `[{"access_token":"` + secretTok + `","expires_in":60}]`, "application/json", "bearer", time.Minute, "not a JSON object"},
		{"JSON string", `"` + secretTok + `"`, "application/json", "bearer", time.Minute, "not a JSON object"},
		{"JSON null", `null`, "application/json", "bearer", time.Minute, "not a JSON object"},
		{"truncated JSON", `{"access_token":"` + secretTok, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"trailing garbage", `{"access_token":"` + secretTok + `","expires_in":60} x`, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"two objects", `{"access_token":"` + secretTok + `"}{"expires_in":60}`, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"JSON without access_token", `{"token_type":"bearer","expires_in":3600}`, "application/json", "bearer", time.Minute, "no access_token"},
		{"empty object", `{}`, "application/json", "bearer", time.Minute, "no access_token"},
		{"empty access_token", `{"access_token":"","expires_in":60}`, "application/json", "bearer", time.Minute, "no access_token"},
		{"null access_token", `{"access_token":null,"expires_in":60}`, "application/json", "bearer", time.Minute, "no access_token"},
		{"numeric access_token", `{"access_token":12345678901234,"expires_in":60}`, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"access_token list", `{"access_token":["` + secretTok + `"],"expires_in":60}`, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"access_token object", `{"access_token":{"value":"` + secretTok + `"},"expires_in":60}`, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"access_token with CR LF", `{"access_token":"` + secretTok + `\r\nX-Injected: 1","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains CR or LF"},
		{"access_token with LF", `{"access_token":"` + secretTok + `\n","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains CR or LF"},
		{"access_token with space", `{"access_token":"` + secretTok + ` more","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a space"},
		{"oneio doc placeholder token", oneioDocLiteral, "application/json", "bearer", time.Minute, "access_token contains a space"},
		{"access_token with tab", `{"access_token":"` + secretTok + `\t","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a control character"},
		{"access_token with NUL", `{"access_token":"` + secretTok + `\u0000","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a control character"},
		{"access_token with DEL", `{"access_token":"` + secretTok + "\x7f" + `","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a control character"},
		{"access_token with ESC", `{"access_token":"` + secretTok + `\u001b[31m","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a control character"},
		{"access_token non-ASCII", `{"access_token":"` + secretTok + `é","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a non-ASCII character"},
		{"access_token invalid UTF-8", `{"access_token":"` + secretTok + "\xff" + `","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token contains a non-ASCII character"},
		{"access_token over 64 KiB", `{"access_token":"` + strings.Repeat(secretTok, 4000) + `","expires_in":60}`, "application/json", "bearer", time.Minute, "access_token is longer than 64 KiB"},
		{"token_type mac", `{"access_token":"` + secretTok + `","token_type":"mac","expires_in":60}`, "application/json", "bearer", time.Minute, `token_type "mac" is not bearer`},
		{"token_type bearer when header wants DPoP", `{"access_token":"` + secretTok + `","token_type":"Bearer","expires_in":60}`, "application/json", "DPoP", time.Minute, `token_type "Bearer" is not DPoP`},
		{"expires_in hexadecimal float", `{"access_token":"` + secretTok + `","expires_in":"0x1p4"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in infinity string", `{"access_token":"` + secretTok + `","expires_in":"Inf"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in with underscores", `{"access_token":"` + secretTok + `","expires_in":"3_600"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"token_type another scheme with spaces", `{"access_token":"` + secretTok + `","token_type":" mac ","expires_in":60}`, "application/json", "bearer", time.Minute, `token_type "mac" is not bearer`},
		{"token_type number", `{"access_token":"` + secretTok + `","token_type":1,"expires_in":60}`, "application/json", "bearer", time.Minute, "malformed JSON"},
		{"token_type carrying the token", `{"access_token":"` + secretTok + `","token_type":"` + secretTok + `","expires_in":60}`, "application/json", "bearer", time.Minute, "is not bearer"},
		{"expires_in negative", `{"access_token":"` + secretTok + `","expires_in":-1}`, "application/json", "bearer", time.Minute, "expires_in -1 is not positive"},
		{"expires_in negative string", `{"access_token":"` + secretTok + `","expires_in":"-3600"}`, "application/json", "bearer", time.Minute, "expires_in -3600 is not positive"},
		{"expires_in zero", `{"access_token":"` + secretTok + `","expires_in":0}`, "application/json", "bearer", time.Minute, "expires_in 0 is not positive"},
		{"expires_in zero string", `{"access_token":"` + secretTok + `","expires_in":"0"}`, "application/json", "bearer", time.Minute, "expires_in 0 is not positive"},
		{"expires_in negative zero", `{"access_token":"` + secretTok + `","expires_in":-0.0}`, "application/json", "bearer", time.Minute, "is not positive"},
		{"expires_in a nanosecond", `{"access_token":"` + secretTok + `","expires_in":1e-9}`, "application/json", "bearer", time.Minute, "less than a second"},
		{"expires_in below a nanosecond", `{"access_token":"` + secretTok + `","expires_in":1e-300}`, "application/json", "bearer", time.Minute, "less than a second"},
		{"expires_in half a second", `{"access_token":"` + secretTok + `","expires_in":0.5}`, "application/json", "bearer", time.Minute, "less than a second"},
		{"expires_in over a year", `{"access_token":"` + secretTok + `","expires_in":31622401}`, "application/json", "bearer", time.Minute, "expires_in 31622401 is longer than a year"},
		{"expires_in huge", `{"access_token":"` + secretTok + `","expires_in":1e12}`, "application/json", "bearer", time.Minute, "is longer than a year"},
		{"expires_in huge string", `{"access_token":"` + secretTok + `","expires_in":"99999999999"}`, "application/json", "bearer", time.Minute, "is longer than a year"},
		{"expires_in overflow", `{"access_token":"` + secretTok + `","expires_in":1e400}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in non-numeric string", `{"access_token":"` + secretTok + `","expires_in":"soon"}`, "application/json", "bearer", time.Minute, `expires_in "soon" is not a number`},
		{"expires_in with unit", `{"access_token":"` + secretTok + `","expires_in":"3600s"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in empty string", `{"access_token":"` + secretTok + `","expires_in":""}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in NaN", `{"access_token":"` + secretTok + `","expires_in":"NaN"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in Infinity", `{"access_token":"` + secretTok + `","expires_in":"Infinity"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in bool", `{"access_token":"` + secretTok + `","expires_in":true}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in object", `{"access_token":"` + secretTok + `","expires_in":{"s":60}}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in list", `{"access_token":"` + secretTok + `","expires_in":[60]}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in carrying the token", `{"access_token":"` + secretTok + `","expires_in":"` + secretTok + `"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"expires_in carrying part of the token", `{"access_token":"` + secretTok + `","expires_in":"xx` + secretTok[4:14] + `"}`, "application/json", "bearer", time.Minute, "is not a number"},
		{"missing expires_in, no default_ttl", `{"access_token":"` + secretTok + `"}`, "application/json", "bearer", 0, "no expires_in and no default_ttl"},
		{"missing expires_in, negative default_ttl", `{"access_token":"` + secretTok + `"}`, "application/json", "bearer", -time.Second, "no expires_in and no default_ttl"},
		{"body over 1 MiB", `{"access_token":"` + secretTok + `","expires_in":60}` + strings.Repeat(" ", MaxBody), "application/json", "bearer", time.Minute, "response body over 1 MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ParseToken([]byte(tt.body), tt.ct, tt.wantType, tt.defaultTTL, obtainedAt)
			if err == nil {
				t.Fatalf("ParseToken() accepted: token %q lifetime %v", tok.AccessToken, tok.Lifetime)
			}
			if tok != nil {
				t.Errorf("ParseToken() returned a token with an error")
			}
			var re *ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T) is not a *ResponseError", err, err)
			}
			if re.Status != 200 {
				t.Errorf("Status = %d, want 200", re.Status)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "token response refused (status 200): ") {
				t.Errorf("error %q lacks the refusal prefix", msg)
			}
			if !strings.Contains(msg, tt.wantReason) {
				t.Errorf("error %q does not say %q", msg, tt.wantReason)
			}
			if run := leakedRun(msg, secretTok); run != "" {
				t.Errorf("error %q shows the token (%q)", msg, run)
			}
			if len(msg) > 400 {
				t.Errorf("error is %d bytes long, want a log line", len(msg))
			}
		})
	}
}

func TestParseError(t *testing.T) {
	html := "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>\n"
	long := strings.Repeat("x", 121)
	tests := []struct {
		name     string
		status   int
		body     string
		wantCode string
		wantDesc string // exact, or prefix when it ends in "…"
		wantMsg  string
	}{
		{"RFC 6749", 400, `{"error":"invalid_client","error_description":"Client authentication failed","error_uri":"https://example.com/e"}`,
			"invalid_client", "Client authentication failed", "token endpoint answered 400 invalid_client: Client authentication failed"},
		{"RFC 6749 code only", 400, `{"error":"unsupported_grant_type"}`, "unsupported_grant_type", "", "token endpoint answered 400 unsupported_grant_type"},
		{"1NCE AuthValidationError", 400, `{"statusCode":400,"errorCode":"AuthValidationError","message":"Auth header validation error: Missing attributes 'password'"}`,
			"AuthValidationError", "Auth header validation error: Missing attributes 'password'", "400 AuthValidationError: Auth header validation error"},
		{"1NCE BodyValidationError", 400, `{"statusCode":400,"errorCode":"BodyValidationError","message":"Request body validation error: Missing attributes 'grant_type'"}`,
			"BodyValidationError", "Request body validation error: Missing attributes 'grant_type'", "BodyValidationError"},
		{"1NCE BadCredentials", 400, `{"statusCode":400,"errorCode":"BadCredentials","message":"User does not exist."}`,
			"BadCredentials", "User does not exist.", "token endpoint answered 400 BadCredentials: User does not exist."},
		{"1NCE UnsupportedContentTypeError", 400, `{"statusCode":400,"errorCode":"UnsupportedContentTypeError","message":"Content-Type not supported"}`,
			"UnsupportedContentTypeError", "Content-Type not supported", "UnsupportedContentTypeError"},
		{"Telenor numeric code", 401, `{"error_code":20,"error_message":"Invalid resource owner credentials"}`,
			"20", "Invalid resource owner credentials", "token endpoint answered 401 20: Invalid resource owner credentials"},
		{"Telenor grant_type", 400, `{"error_code":2,"error_message":"Missing or invalid grant_type"}`, "2", "Missing or invalid grant_type", "400 2: Missing"},
		{"Telenor scope", 403, `{"error_code":8,"error_message":"Illegal or non authorized scope"}`, "8", "Illegal or non authorized scope", "403 8:"},
		{"Telenor code as string", 401, `{"error_code":"22","error_message":"Basic Authentication failed, bad username or password."}`, "22", "Basic Authentication failed, bad username or password.", "401 22:"},
		{"code and errorMessage", 500, `{"code":16,"errorMessage":"Invalid App Attributes.Please contact Telenor Admin"}`, "16", "Invalid App Attributes.Please contact Telenor Admin", "500 16:"},
		{"description alias", 401, `{"error":"unauthorized","description":"nope"}`, "unauthorized", "nope", "401 unauthorized: nope"},
		{"control characters sanitized", 401, `{"error":"bad\r\nX-Fake: 1","error_description":"line1\nline2\u0000"}`, "bad??X-Fake: 1", "line1?line2?", "bad??X-Fake: 1"},
		{"long description truncated", 401, `{"error":"x","error_description":"` + strings.Repeat("d", 500) + `"}`, "x", strings.Repeat("d", 200) + "…", "401 x: ddd"},
		{"plain text", 500, "Internal Server Error\n", "", "Internal Server Error", "token endpoint answered 500: Internal Server Error"},
		{"plain text with controls", 401, "Unauthorized\x1b[31m", "", "Unauthorized?[31m", "Unauthorized?[31m"},
		{"long plain text measured", 503, long, "", "non-JSON body of 121 bytes", "503: non-JSON body of 121 bytes"},
		{"HTML measured only", 502, html, "", "non-JSON body of " + strconv.Itoa(len(html)) + " bytes", "502: non-JSON body"},
		{"empty body", 401, "", "", "empty body", "token endpoint answered 401: empty body"},
		{"JSON without known fields", 400, `{"foo":"bar"}`, "", "non-JSON body of 13 bytes", "body of 13 bytes"},
		{"nested error object", 400, `{"error":{"code":1}}`, "", "non-JSON body of 20 bytes", "400"},
		{"JSON null", 400, `null`, "", "null", "400: null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ParseError(tt.status, []byte(tt.body))
			var pe *ProviderError
			if !errors.As(err, &pe) {
				t.Fatalf("ParseError() = %v (%T), want *ProviderError", err, err)
			}
			if pe.Status != tt.status || pe.Code != tt.wantCode || pe.Description != tt.wantDesc {
				t.Errorf("ParseError() = {%d %q %q}, want {%d %q %q}", pe.Status, pe.Code, pe.Description, tt.status, tt.wantCode, tt.wantDesc)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Error() = %q, want it to contain %q", err, tt.wantMsg)
			}
			if strings.ContainsAny(err.Error(), "<>\r\n\x00") {
				t.Errorf("Error() = %q is not fit for one log line", err)
			}
		})
	}
}

func TestProviderErrorCredentials(t *testing.T) {
	for status, want := range map[int]bool{
		400: true, 401: true, 403: true,
		200: false, 404: false, 405: false, 408: false, 409: false, 429: false,
		500: false, 502: false, 503: false, 504: false,
	} {
		if got := (&ProviderError{Status: status}).Credentials(); got != want {
			t.Errorf("ProviderError{Status: %d}.Credentials() = %v, want %v", status, got, want)
		}
	}
}

// TestProviderErrorTransient: a Retry-After, 408, 429 and 5xx (and a 200
// with server_error or temporarily_unavailable) say "not now"; every other
// error answer refuses the request itself.
func TestProviderErrorTransient(t *testing.T) {
	for _, c := range []struct {
		pe   ProviderError
		want bool
	}{
		{ProviderError{Status: 408}, true}, {ProviderError{Status: 429}, true},
		{ProviderError{Status: 500}, true}, {ProviderError{Status: 503}, true}, {ProviderError{Status: 504}, true},
		{ProviderError{Status: 400, RetryAfter: time.Second}, true},
		{ProviderError{Status: 200, Code: "temporarily_unavailable"}, true}, {ProviderError{Status: 200, Code: "server_error"}, true},
		{ProviderError{Status: 400, Code: "invalid_grant"}, false}, {ProviderError{Status: 401, Code: "7"}, false},
		{ProviderError{Status: 403}, false}, {ProviderError{Status: 404}, false},
		{ProviderError{Status: 200, Code: "invalid_grant"}, false}, {ProviderError{Status: 200, Code: "expired_token"}, false},
	} {
		if got := c.pe.Transient(); got != c.want {
			t.Errorf("%+v.Transient() = %v, want %v", c.pe, got, c.want)
		}
	}
}

func TestResponseErrorFormat(t *testing.T) {
	err := &ResponseError{Status: 307, Reason: "redirect refused"}
	if got, want := err.Error(), "token response refused (status 307): redirect refused"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
