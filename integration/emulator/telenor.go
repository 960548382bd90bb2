package emulator

import (
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Telenor: POST /oauth/v2/token with HTTP Basic client credentials and an
// x-www-form-urlencoded body: grant_type=password with username and password
// (and optional scope), or grant_type=refresh_token with refresh_token.
// expires_in is a JSON string. GET /oauth/v2/logout with a Bearer token
// revokes it. The docs give only numeric codes; errors are answered as
// {"error_code":N,"error_message":"..."} with the documented status.

// Telenor's documented error codes.
const (
	telenorBadRequest        = 2  // 400 missing or invalid grant_type (also: invalid access token at logout)
	telenorBadAuthHeader     = 6  // 401 missing or bad Authorization header
	telenorInvalidRefresh    = 7  // 401 invalid refresh_token
	telenorIllegalScope      = 8  // 403 illegal or non authorized scope
	telenorBadOwner          = 20 // 401 invalid resource owner credentials
	telenorGrantNotPermitted = 21 // 401 insufficient permissions to use requested grant_type
	telenorBasicFailed       = 22 // 401 Basic authentication failed
)

var telenorFlavor = flavor{
	check: (*Provider).checkTelenor,
	success: func(access, refresh string, ttl time.Duration) response {
		return func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, struct {
				AccessToken  string `json:"access_token"`
				ExpiresIn    string `json:"expires_in"`
				TokenType    string `json:"token_type"`
				RefreshToken string `json:"refresh_token,omitempty"`
			}{access, strconv.FormatInt(expiresIn(Telenor, ttl), 10), "Bearer", refresh})
		}
	},
	badCredentials: func(req tokenRequest) response {
		if req.refreshToken != "" {
			return telenorError(http.StatusUnauthorized, telenorInvalidRefresh, "Invalid refresh_token")
		}
		return telenorBadOwnerResp
	},
	errorf: func(status int, msg string) response {
		return telenorError(status, telenorBadRequest, msg)
	},
}

var telenorBadOwnerResp = telenorError(http.StatusUnauthorized, telenorBadOwner, "Invalid resource owner credentials")

func telenorError(status, code int, msg string) response {
	return func(w http.ResponseWriter) {
		writeJSON(w, status, struct {
			Code    int    `json:"error_code"`
			Message string `json:"error_message"`
		}{code, msg})
	}
}

func (p *Provider) checkTelenor(c *check, w http.ResponseWriter, r *http.Request) tokenRequest {
	bad := func(status int, msg string) response { return telenorError(status, telenorBadRequest, msg) }
	if !c.method(r, http.MethodPost, bad) {
		return tokenRequest{}
	}
	c.noQuery(r, bad(http.StatusBadRequest, "Query parameters not supported"))
	c.acceptJSON(r, bad(http.StatusBadRequest, "Accept must allow application/json"))

	basicFailed := telenorError(http.StatusUnauthorized, telenorBasicFailed,
		"Basic Authentication failed, bad username or password.")
	switch user, pass, problem := basicAuth(r); {
	case problem != "":
		c.violation(telenorError(http.StatusUnauthorized, telenorBadAuthHeader,
			"Missing or bad Authorization header"), "%s", problem)
	case !same(user, p.cfg.ClientID):
		c.violation(basicFailed, "Basic username is not the configured client_id")
	case !same(pass, p.cfg.ClientSecret):
		c.violation(basicFailed, "Basic password is not the client_secret of the client_id")
	}

	c.contentType(r, "application/x-www-form-urlencoded",
		bad(http.StatusBadRequest, "Content-Type must be application/x-www-form-urlencoded"))
	body, ok := c.body(w, r, bad(http.StatusRequestEntityTooLarge, "Request body too large"))
	if !ok {
		return tokenRequest{}
	}
	var req tokenRequest
	var allowed []string
	grant := formValue(body, "grant_type")
	switch grant {
	case "password":
		allowed = []string{"grant_type", "username", "password", "scope"}
	case "refresh_token":
		allowed = []string{"grant_type", "refresh_token", "scope"}
	default:
		allowed = []string{"grant_type", "username", "password", "scope", "refresh_token"}
	}
	form := c.form(body, allowed, bad(http.StatusBadRequest, "Malformed or unexpected parameters"))

	scope, scopeSent := form.Get("scope"), form.Has("scope")
	illegalScope := telenorError(http.StatusForbidden, telenorIllegalScope, "Illegal or non authorized scope")
	switch grant {
	case "password":
		switch user, pass := form.Get("username"), form.Get("password"); {
		case user == "":
			c.violation(telenorBadOwnerResp, "no username")
		case pass == "":
			c.violation(telenorBadOwnerResp, "no password")
		case !same(user, p.cfg.Username):
			c.violation(telenorBadOwnerResp, "username is not the configured resource owner")
		case !same(pass, p.cfg.Password):
			c.violation(telenorBadOwnerResp, "password is wrong for the resource owner")
		}
		if p.cfg.Scope != "" && scope != p.cfg.Scope {
			c.violation(illegalScope, "scope %q, want %q", clip(scope), p.cfg.Scope)
		}
	case "refresh_token":
		req.refreshToken = form.Get("refresh_token")
		if req.refreshToken == "" {
			c.violation(telenorError(http.StatusUnauthorized, telenorInvalidRefresh, "Invalid refresh_token"),
				"no refresh_token")
		}
		if p.cfg.Scope != "" && scopeSent && scope != p.cfg.Scope {
			c.violation(illegalScope, "scope %q, want %q (or none)", clip(scope), p.cfg.Scope)
		}
	case "":
		c.violation(bad(http.StatusBadRequest, "Missing or invalid grant_type"), "no grant_type")
	case "client_credentials", "authorization_code":
		c.violation(telenorError(http.StatusUnauthorized, telenorGrantNotPermitted,
			"Unsufficient permissions to use requested grant_type"),
			"grant_type %q, want password or refresh_token", grant)
	default:
		c.violation(bad(http.StatusBadRequest, "Missing or invalid grant_type"),
			"grant_type %q, want password or refresh_token", clip(grant))
	}
	if p.cfg.Scope == "" && scopeSent && scope == "" {
		c.violation(illegalScope, "empty scope field")
	}
	return req
}

// formValue is the first value of key in a form body ("" if unparsable).
func formValue(body []byte, key string) string {
	vals, _ := url.ParseQuery(string(body))
	return vals.Get(key)
}

// serveLogout revokes the Bearer token of a GET /oauth/v2/logout.
func (p *Provider) serveLogout(w http.ResponseWriter, r *http.Request) {
	p.logoutRequests.Add(1)
	c := &check{}
	bad := func(status int, msg string) response { return telenorError(status, telenorBadRequest, msg) }
	invalid := telenorError(http.StatusUnauthorized, telenorBadRequest, "Invalid access token")
	var token string
	if c.method(r, http.MethodGet, bad) {
		c.noQuery(r, bad(http.StatusBadRequest, "Query parameters not supported"))
		var problem string
		if token, problem = bearer(r.Header.Values("Authorization")); problem != "" {
			c.violation(telenorError(http.StatusUnauthorized, telenorBadAuthHeader,
				"Missing or bad Authorization header"), "%s", problem)
		}
	}
	mode, ok := p.await(r.Context())
	var resp response
	switch {
	case !ok:
	case mode == Down:
		resp = down
	case mode == Garbage:
		resp = garbage
	case c.resp != nil:
		resp = c.resp
	default:
		switch revoked, known := p.revokeAccess(token); {
		case revoked:
			p.logouts.Add(1)
			resp = func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				_, _ = w.Write([]byte("OK!"))
			}
		case known: // expired or revoked already: retiring it is legitimate
			resp = invalid
		default:
			c.violation(invalid, "logout with a token this provider never issued")
			resp = c.resp
		}
	}
	p.finish(w, r, c, resp)
}
