package emulator

import (
	"net/http"
	"time"
)

// ONEiO: POST /oauth2/token, x-www-form-urlencoded body with exactly
// grant_type=client_credentials, client_id and client_secret, no
// Authorization header. Errors are RFC 6749 {"error","error_description"}.

var oneioFlavor = flavor{
	check: (*Provider).checkONEiO,
	success: func(access, _ string, ttl time.Duration) response {
		return func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, struct {
				AccessToken string `json:"access_token"`
				Scope       string `json:"scope"`
				TokenType   string `json:"token_type"`
				ExpiresIn   int64  `json:"expires_in"`
			}{access, "ROLE_INTEGRATION", "Bearer", expiresIn(ONEiO, ttl)})
		}
	},
	badCredentials: func(tokenRequest) response { return oneioBadCredentials },
	errorf: func(status int, msg string) response {
		return oneioError(status, "invalid_request", msg)
	},
}

var oneioBadCredentials = oneioError(http.StatusUnauthorized, "invalid_client", "Bad client credentials")

func oneioError(status int, code, desc string) response {
	return func(w http.ResponseWriter) {
		writeJSON(w, status, struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}{code, desc})
	}
}

func (p *Provider) checkONEiO(c *check, w http.ResponseWriter, r *http.Request) tokenRequest {
	invalid := func(status int, desc string) response { return oneioError(status, "invalid_request", desc) }
	if !c.method(r, http.MethodPost, invalid) {
		return tokenRequest{}
	}
	c.noQuery(r, invalid(http.StatusBadRequest, "Query parameters are not supported"))
	c.acceptJSON(r, invalid(http.StatusBadRequest, "Accept must allow application/json"))
	c.noAuthorization(r, invalid(http.StatusBadRequest, "Use only one client authentication method"))
	c.contentType(r, "application/x-www-form-urlencoded",
		invalid(http.StatusBadRequest, "Content-Type must be application/x-www-form-urlencoded"))
	body, ok := c.body(w, r, invalid(http.StatusRequestEntityTooLarge, "Request body too large"))
	if !ok {
		return tokenRequest{}
	}
	allowed := []string{"grant_type", "client_id", "client_secret"}
	if p.cfg.Scope != "" {
		allowed = append(allowed, "scope")
	}
	form := c.form(body, allowed, invalid(http.StatusBadRequest, "Malformed or unexpected parameters"))

	switch grant := form.Get("grant_type"); grant {
	case "client_credentials":
	case "":
		c.violation(invalid(http.StatusBadRequest, "Missing grant_type"), "no grant_type")
	default:
		c.violation(oneioError(http.StatusBadRequest, "unsupported_grant_type", "Unsupported grant type"),
			"grant_type %q, want client_credentials", clip(grant))
	}
	id, secret := form.Get("client_id"), form.Get("client_secret")
	switch {
	case id == "":
		c.violation(invalid(http.StatusBadRequest, "Missing client_id"), "no client_id")
	case secret == "":
		c.violation(invalid(http.StatusBadRequest, "Missing client_secret"), "no client_secret")
	case !same(id, p.cfg.ClientID):
		c.violation(oneioBadCredentials, "client_id is not the configured one")
	case !same(secret, p.cfg.ClientSecret):
		c.violation(oneioBadCredentials, "client_secret is wrong for the client_id")
	}
	if p.cfg.Scope != "" && form.Get("scope") != p.cfg.Scope {
		c.violation(oneioError(http.StatusBadRequest, "invalid_scope", "Invalid scope"),
			"scope %q, want %q", clip(form.Get("scope")), p.cfg.Scope)
	}
	return tokenRequest{}
}
