package grants

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// MaxLifetime is the longest expires_in accepted; a longer one is refused as
// implausible rather than cached for years.
const MaxLifetime = 366 * 24 * time.Hour

// Token is an access token and what its response said of it. Its String and
// GoString never show the token, so a stray log call cannot leak it. They
// have value receivers so that this holds for a Token as well as a *Token.
type Token struct {
	AccessToken  string
	TokenType    string
	RefreshToken string
	Scope        string
	// Lifetime is the expires_in of the response, or the default when it had none.
	Lifetime time.Duration
	// Obtained is when the request that got the token was sent; Expiry is
	// Obtained + Lifetime, so clock time spent in transit counts against it.
	Obtained time.Time
	Expiry   time.Time
}

func (t Token) String() string   { return "[token redacted]" }
func (t Token) GoString() string { return "[token redacted]" }

// ResponseError is an answer from the token endpoint that is not usable: not
// JSON, no access_token, an unsafe token, a wrong token_type, too large.
type ResponseError struct {
	Status int
	Reason string
}

func (e *ResponseError) Error() string {
	return fmt.Sprintf("token response refused (status %d): %s", e.Status, e.Reason)
}

// ProviderError is an error answer from the token endpoint, in the provider's
// own words: RFC 6749 error/error_description, 1NCE's errorCode/message,
// Telenor's numeric codes. Code and Description hold no secret of the
// client's: they are redacted, and withheld whole where they share a run of
// 8 bytes with a secret (see redactor).
type ProviderError struct {
	Status      int
	Code        string
	Description string
	// RetryAfter is the provider's own Retry-After (on 429 or 503), at most
	// MaxRetryAfter; zero when it sent none.
	RetryAfter time.Duration
}

// MaxRetryAfter caps how long a provider's Retry-After is honoured.
const MaxRetryAfter = time.Hour

func (e *ProviderError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "token endpoint answered %d", e.Status)
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.Description != "" {
		fmt.Fprintf(&b, ": %s", e.Description)
	}
	return b.String()
}

// Credentials reports whether the provider rejected the request itself
// (400/401/403), which retrying soon will not mend. A 200 whose body is an
// RFC 6749 error counts as the status that error is sent with.
func (e *ProviderError) Credentials() bool {
	status := e.status()
	return status == 400 || status == 401 || status == 403
}

// Transient reports whether the provider answered that it cannot serve the
// request now, which a later attempt may mend: it sent a Retry-After, or
// the status is 408, 429 or 5xx. A 200 whose body is an RFC 6749 error
// counts as the status that error is sent with (server_error,
// temporarily_unavailable). Any other error answer refuses the request
// itself.
func (e *ProviderError) Transient() bool {
	if e.RetryAfter > 0 {
		return true
	}
	status := e.status()
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// status is the answer's status, or for a 200 whose body is an RFC 6749
// error the status that error is sent with.
func (e *ProviderError) status() int {
	if e.Status == http.StatusOK {
		return rfc6749Status(e.Code)
	}
	return e.Status
}

// rfc6749Status is the status RFC 6749 (section 5.2) sends error code with,
// and 6749's two server-side codes (section 4.1.2.1) theirs; 0 for other
// codes.
func rfc6749Status(code string) int {
	switch code {
	case "invalid_client":
		return http.StatusUnauthorized
	case "invalid_request", "invalid_grant", "unauthorized_client", "unsupported_grant_type", "invalid_scope":
		return http.StatusBadRequest
	case "server_error":
		return http.StatusInternalServerError
	case "temporarily_unavailable":
		return http.StatusServiceUnavailable
	}
	return 0
}

// tokenResponse is the union of the fields the providers send.
type tokenResponse struct {
	Error        *string         `json:"error"` // RFC 6749, on a 200 that is no token
	AccessToken  *string         `json:"access_token"`
	TokenType    *string         `json:"token_type"`
	ExpiresIn    json.RawMessage `json:"expires_in"`
	RefreshToken *string         `json:"refresh_token"`
	Scope        json.RawMessage `json:"scope"`
}

// utf8BOM is the byte order mark some servers put before a UTF-8 body.
var utf8BOM = []byte("\xef\xbb\xbf")

// ParseToken reads a 200 answer of the token endpoint. wantType is the
// token_type it must carry, if any (case-insensitive); defaultTTL is the
// lifetime when expires_in is absent; obtained is when the request was sent.
// A body that is an RFC 6749 error (an error field, no access_token) is a
// *ProviderError with status 200.
func ParseToken(body []byte, contentType, wantType string, defaultTTL time.Duration, obtained time.Time) (*Token, error) {
	return parseToken(body, contentType, wantType, defaultTTL, obtained, redactor{})
}

func parseToken(body []byte, contentType, wantType string, defaultTTL time.Duration, obtained time.Time, red redactor) (*Token, error) {
	// The provider's text in a reason is redacted where it is quoted;
	// the module's own words are not.
	refuse := func(format string, args ...any) error {
		return &ResponseError{Status: 200, Reason: fmt.Sprintf(format, args...)}
	}
	if len(body) > MaxBody {
		return nil, refuse("response body over 1 MiB")
	}
	trimmed := bytes.TrimSpace(bytes.TrimPrefix(body, utf8BOM))
	if len(trimmed) == 0 {
		return nil, refuse("empty body")
	}
	if trimmed[0] != '{' {
		mt, _, _ := mime.ParseMediaType(contentType)
		if mt == "" {
			mt = "none"
		}
		return nil, refuse("body is not a JSON object (content-type %s)", red.clean(mt, 64))
	}
	var tr tokenResponse
	if err := json.Unmarshal(trimmed, &tr); err != nil {
		return nil, refuse("malformed JSON: %s", red.clean(err.Error(), 120))
	}
	if tr.AccessToken == nil || *tr.AccessToken == "" {
		if tr.Error != nil && *tr.Error != "" {
			return nil, parseError(http.StatusOK, trimmed, red)
		}
		return nil, refuse("no access_token")
	}
	if reason := unsafeToken(*tr.AccessToken); reason != "" {
		return nil, refuse("access_token %s", reason)
	}
	tok := &Token{AccessToken: *tr.AccessToken, Obtained: obtained}
	if tr.TokenType != nil && strings.TrimSpace(*tr.TokenType) != "" {
		// Surrounding spaces ("Bearer ") are a harmless slip of some servers.
		tok.TokenType = strings.TrimSpace(*tr.TokenType)
		if wantType != "" && !strings.EqualFold(tok.TokenType, wantType) {
			return nil, refuse("token_type %s is not %s", mention(tok.TokenType, 32, true, tok.AccessToken, red), wantType)
		}
	}
	lifetime, err := parseExpiresIn(tr.ExpiresIn, tok.AccessToken, red)
	if err != nil {
		return nil, refuse("%v", err)
	}
	if lifetime == 0 {
		lifetime = defaultTTL
	}
	if lifetime <= 0 {
		return nil, refuse("no expires_in and no default_ttl")
	}
	tok.Lifetime = lifetime
	tok.Expiry = obtained.Add(lifetime)
	if tr.RefreshToken != nil && *tr.RefreshToken != "" && unsafeToken(*tr.RefreshToken) == "" {
		tok.RefreshToken = *tr.RefreshToken
	}
	tok.Scope = scopeString(tr.Scope)
	return tok, nil
}

// decimal is the JSON number syntax, without a sign: the only way
// expires_in may be written, as a number or in a string (Telenor).
// strconv.ParseFloat alone would also take "0x1p4", "Inf" or "1_0".
var decimal = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// parseExpiresIn reads expires_in as a number or a numeric string (Telenor).
// Absent or null gives 0; zero, negative, under a second, non-numeric (or
// not decimal) and implausibly large values are errors. token is the access
// token, which the error never quotes, and red removes secrets from it.
func parseExpiresIn(raw json.RawMessage, token string, red redactor) (time.Duration, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, nil
	}
	if strings.HasPrefix(s, `"`) {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			return 0, fmt.Errorf("expires_in is not a number")
		}
		s = strings.TrimSpace(str)
	}
	// A value that is a decimal number is quoted as it is: the number
	// syntax leaves no secret to redact.
	if strings.HasPrefix(s, "-") && decimal.MatchString(s[1:]) {
		return 0, fmt.Errorf("expires_in %s is not positive", mention(s, 32, false, token, redactor{}))
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !decimal.MatchString(s) || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("expires_in %s is not a number", mention(s, 32, true, token, red))
	}
	if f <= 0 {
		return 0, fmt.Errorf("expires_in %s is not positive", mention(s, 32, false, token, redactor{}))
	}
	if f < 1 {
		// Would round to a lifetime of (almost) nothing, or to 0, which
		// the caller takes for "absent" and replaces by default_ttl.
		return 0, fmt.Errorf("expires_in %s is less than a second", mention(s, 32, false, token, redactor{}))
	}
	if f > MaxLifetime.Seconds() {
		return 0, fmt.Errorf("expires_in %s is longer than a year", mention(s, 32, false, token, redactor{}))
	}
	return time.Duration(f * float64(time.Second)), nil
}

// mention returns a response field's value for an error message: redacted,
// sanitized, quoted if quote, and withheld if it shares a run of 8 or more
// bytes with the access token or with a secret, so that a field that echoes
// the token or part of a secret cannot carry it into a log.
func mention(v string, max int, quote bool, token string, red redactor) string {
	s := sanitize(red.apply(v), max)
	if quote {
		s = strconv.Quote(s)
	}
	if sharesRun(s, []string{token}, nil) || red.shares(s) {
		return "(withheld)"
	}
	return s
}

// unsafeToken says what is wrong with a token that cannot go into an HTTP
// header as it is: anything outside visible ASCII (spaces, CR, LF, controls,
// non-ASCII). It names the problem, never the token.
func unsafeToken(s string) string {
	if len(s) > 64<<10 {
		return "is longer than 64 KiB"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ':
			return "contains a space"
		case c == '\r' || c == '\n':
			return "contains CR or LF"
		case c < 0x20 || c == 0x7f:
			return "contains a control character"
		case c > 0x7e:
			return "contains a non-ASCII character"
		}
	}
	return ""
}

// scopeString reads scope as a string, or a list of strings.
func scopeString(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return sanitize(s, 256)
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return sanitize(strings.Join(list, " "), 256)
	}
	return ""
}

// ParseError reads an error answer in whichever provider shape it has.
func ParseError(status int, body []byte) error {
	return parseError(status, body, redactor{})
}

// parseError is ParseError with red's secrets removed from the provider's
// words before they are cut to the length of a log line (so that no part of
// a secret survives at the cut), and a field that still shares a run with a
// secret withheld (see redactor.clean).
func parseError(status int, body []byte, red redactor) *ProviderError {
	pe := &ProviderError{Status: status}
	body = bytes.TrimPrefix(body, utf8BOM)
	var m map[string]json.RawMessage
	if json.Unmarshal(bytes.TrimSpace(body), &m) == nil {
		pe.Code = firstField(m, red, "error", "errorCode", "error_code", "code")
		pe.Description = firstField(m, red, "error_description", "message", "error_message", "errorMessage", "description")
	}
	if pe.Code == "" && pe.Description == "" {
		pe.Description = describeBody(body, red)
	}
	return pe
}

// firstField returns the first of names present in m, as text (strings and
// numbers), cleaned for a log line (see redactor.clean).
func firstField(m map[string]json.RawMessage, red redactor, names ...string) string {
	for _, n := range names {
		raw, ok := m[n]
		if !ok {
			continue
		}
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			return red.clean(s, 200)
		}
		var num json.Number
		if json.Unmarshal(raw, &num) == nil {
			return red.clean(num.String(), 32)
		}
	}
	return ""
}

// describeBody summarizes a non-JSON error body: a short plain text is quoted
// (redacted, and withheld if it shares a run with a secret), anything else
// only measured.
func describeBody(body []byte, red redactor) string {
	t := strings.TrimSpace(red.apply(string(body)))
	switch {
	case t == "":
		return "empty body"
	case len(t) <= 120 && !strings.ContainsAny(t, "<>{}"):
		return red.withhold(sanitize(t, 120))
	default:
		return fmt.Sprintf("non-JSON body of %d bytes", len(body))
	}
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP
// date, at most MaxRetryAfter; zero when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}

// sanitize keeps s fit for one log line: printable runes only, at most max
// bytes.
func sanitize(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= max {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			b.WriteByte('?')
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
