package emulator

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// response writes one answer.
type response func(http.ResponseWriter)

// check collects the deviations of one request. The first failure decides the
// answer; every deviation is recorded.
type check struct {
	problems []string
	resp     response
}

// violation records a deviation, answered with resp unless an earlier failure
// already decided the answer. Never pass credential values in args.
func (c *check) violation(resp response, format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
	c.reject(resp)
}

// reject fails the request without a violation (e.g. an expired refresh token).
func (c *check) reject(resp response) {
	if c.resp == nil {
		c.resp = resp
	}
}

// method requires want; on anything else it answers 405 and returns false.
func (c *check) method(r *http.Request, want string, errorf func(int, string) response) bool {
	if r.Method == want {
		return true
	}
	fail := errorf(http.StatusMethodNotAllowed, "Method Not Allowed")
	c.violation(func(w http.ResponseWriter) {
		w.Header().Set("Allow", want)
		fail(w)
	}, "method %s, want %s", clip(r.Method), want)
	return false
}

// noQuery requires the URL to have no query string (parameters belong in the
// body, where they are not logged).
func (c *check) noQuery(r *http.Request, resp response) {
	if r.URL.RawQuery == "" && !r.URL.ForceQuery {
		return
	}
	q, _ := url.ParseQuery(r.URL.RawQuery)
	if len(q) == 0 {
		c.violation(resp, "unexpected query string")
		return
	}
	c.violation(resp, "unexpected query string (parameters %s)", names(q))
}

// acceptJSON requires an Accept header that admits application/json by name.
func (c *check) acceptJSON(r *http.Request, resp response) {
	vals := r.Header.Values("Accept")
	if len(vals) == 0 {
		c.violation(resp, "no Accept header, want Accept: application/json")
		return
	}
	for _, v := range vals {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil || mt != "application/json" {
				continue
			}
			if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q == 0 {
				continue
			}
			return
		}
	}
	c.violation(resp, "Accept %q does not name application/json", clip(strings.Join(vals, ", ")))
}

// contentType requires one Content-Type header of media type want, with no
// parameter other than charset=utf-8.
func (c *check) contentType(r *http.Request, want string, resp response) {
	vals := r.Header.Values("Content-Type")
	switch {
	case len(vals) == 0:
		c.violation(resp, "no Content-Type header, want %s", want)
		return
	case len(vals) > 1:
		c.violation(resp, "%d Content-Type headers", len(vals))
		return
	}
	mt, params, err := mime.ParseMediaType(vals[0])
	if err != nil || mt != want {
		c.violation(resp, "Content-Type %q, want %s", clip(vals[0]), want)
		return
	}
	for _, k := range sortedKeys(params) {
		if k != "charset" || !strings.EqualFold(params[k], "utf-8") {
			c.violation(resp, "unexpected Content-Type parameter %s=%q", clip(k), clip(params[k]))
		}
	}
}

// noAuthorization requires that the request carries no Authorization header.
func (c *check) noAuthorization(r *http.Request, resp response) {
	if len(r.Header.Values("Authorization")) > 0 {
		c.violation(resp, "unexpected Authorization header (credentials belong in the body)")
	}
}

// body reads the request body up to MaxBodySize. ok is false, with a
// violation answered by tooLarge, when it is larger or unreadable.
func (c *check) body(w http.ResponseWriter, r *http.Request, tooLarge response) (body []byte, ok bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		if _, big := errors.AsType[*http.MaxBytesError](err); big {
			c.violation(tooLarge, "body larger than %d bytes", MaxBodySize)
		} else {
			c.violation(tooLarge, "body unreadable: %v", err)
		}
		return nil, false
	}
	return body, true
}

// form parses an x-www-form-urlencoded body and requires every field to be in
// allowed and sent once. Missing fields are for the caller to judge.
func (c *check) form(body []byte, allowed []string, resp response) url.Values {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		c.violation(resp, "body is not valid x-www-form-urlencoded data")
	}
	for _, k := range sortedKeys(vals) {
		switch {
		case !slices.Contains(allowed, k):
			c.violation(resp, "unexpected form field %q", clip(k))
		case len(vals[k]) > 1:
			c.violation(resp, "form field %q sent %d times", k, len(vals[k]))
		}
	}
	return vals
}

// jsonObject decodes body as exactly one JSON object and lists repeated keys.
func jsonObject(body []byte) (obj map[string]json.RawMessage, repeated []string, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, errors.New("body is not a JSON object")
	}
	obj = map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, errors.New("body is not valid JSON")
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, errors.New("body is not valid JSON")
		}
		if _, dup := obj[key]; dup {
			repeated = append(repeated, key)
		}
		obj[key] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, errors.New("body is not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("data after the JSON object")
	}
	return obj, repeated, nil
}

// basicAuth parses the request's one Authorization header as HTTP Basic
// (scheme in any case). problem says what is wrong, without any credential.
func basicAuth(r *http.Request) (user, pass, problem string) {
	vals := r.Header.Values("Authorization")
	switch {
	case len(vals) == 0:
		return "", "", "no Authorization header, want Basic"
	case len(vals) > 1:
		return "", "", fmt.Sprintf("%d Authorization headers", len(vals))
	}
	scheme, rest, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", "", "Authorization scheme is not Basic"
	}
	raw, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return "", "", "Authorization: Basic credentials are not valid base64"
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", "", "Authorization: Basic credentials have no ':' separator"
	}
	return user, pass, ""
}

// bearer parses one Authorization header value as "Bearer <token>" (scheme
// in any case). problem says what is wrong, without the token.
func bearer(vals []string) (token, problem string) {
	switch {
	case len(vals) == 0:
		return "", "no Authorization header"
	case len(vals) > 1:
		return "", fmt.Sprintf("%d Authorization headers", len(vals))
	}
	scheme, token, _ := strings.Cut(vals[0], " ")
	switch {
	case !strings.EqualFold(scheme, "Bearer"):
		return "", "Authorization scheme is not Bearer"
	case token == "" || strings.ContainsAny(token, " \t"):
		return "", "Authorization: Bearer value is not one token"
	}
	return token, ""
}

// same compares a secret in constant time.
func same(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// clip shortens s for a violation message.
func clip(s string) string {
	const limit = 64
	if len(s) > limit {
		return s[:limit] + "…"
	}
	return s
}

// names lists the keys of vals for a message, sorted and clipped.
func names(vals url.Values) string {
	keys := sortedKeys(vals)
	for i, k := range keys {
		keys[i] = strconv.Quote(clip(k))
	}
	return strings.Join(keys, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// raiseMax stores n in most if it is larger than what most holds: the
// highest number of requests in flight at once so far.
func raiseMax(most *atomic.Int64, n int64) {
	for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed shapes are marshalled
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
