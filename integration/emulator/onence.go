package emulator

import (
	"encoding/json"
	"net/http"
	"time"
)

// 1NCE: POST /management-api/oauth/token, HTTP Basic with the API user's
// username and password, JSON body {"grant_type":"client_credentials"}.
// Errors are 400 {"statusCode":400,"errorCode":"...","message":"..."}.

var oneNCEFlavor = flavor{
	check: (*Provider).check1NCE,
	success: func(access, _ string, ttl time.Duration) response {
		return func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, struct {
				StatusCode  int    `json:"status_code"`
				AccessToken string `json:"access_token"`
				TokenType   string `json:"token_type"`
				ExpiresIn   int64  `json:"expires_in"`
				UserID      string `json:"userId"`
				Scope       string `json:"scope"`
			}{http.StatusOK, access, "bearer", expiresIn(OneNCE, ttl), "user", "all"})
		}
	},
	badCredentials: func(tokenRequest) response { return oneNCEBadCredentials },
	errorf:         oneNCEErrorf,
}

// oneNCEErrorf answers failures that 1NCE documents no errorCode for.
func oneNCEErrorf(status int, msg string) response {
	code := "BadRequest"
	switch status {
	case http.StatusNotFound:
		code = "NotFound"
	case http.StatusMethodNotAllowed:
		code = "MethodNotAllowed"
	case http.StatusRequestEntityTooLarge:
		code = "PayloadTooLarge"
	}
	return oneNCEError(status, code, msg)
}

var oneNCEBadCredentials = oneNCEError(http.StatusBadRequest, "BadCredentials", "User does not exist.")

func oneNCEError(status int, code, msg string) response {
	return func(w http.ResponseWriter) {
		writeJSON(w, status, struct {
			StatusCode int    `json:"statusCode"`
			ErrorCode  string `json:"errorCode"`
			Message    string `json:"message"`
		}{status, code, msg})
	}
}

func (p *Provider) check1NCE(c *check, w http.ResponseWriter, r *http.Request) tokenRequest {
	errorf := oneNCEErrorf
	if !c.method(r, http.MethodPost, errorf) {
		return tokenRequest{}
	}
	c.noQuery(r, errorf(http.StatusBadRequest, "Query parameters not supported"))
	c.acceptJSON(r, errorf(http.StatusBadRequest, "Accept must allow application/json"))

	missing := func(attr string) response {
		return oneNCEError(http.StatusBadRequest, "AuthValidationError",
			"Auth header validation error: Missing attributes '"+attr+"'")
	}
	switch user, pass, problem := basicAuth(r); {
	case problem != "":
		c.violation(missing("username"), "%s", problem)
	case user == "":
		c.violation(missing("username"), "Basic username is empty")
	case pass == "":
		c.violation(missing("password"), "Basic password is empty")
	case !same(user, p.cfg.ClientID):
		c.violation(oneNCEBadCredentials, "Basic username is not the configured API user")
	case !same(pass, p.cfg.ClientSecret):
		c.violation(oneNCEBadCredentials, "Basic password is wrong for the API user")
	}

	c.contentType(r, "application/json", oneNCEError(http.StatusBadRequest,
		"UnsupportedContentTypeError", "Content-Type not supported"))
	body, ok := c.body(w, r, errorf(http.StatusRequestEntityTooLarge, "Request body too large"))
	if !ok {
		return tokenRequest{}
	}
	invalid := func(msg string) response {
		return oneNCEError(http.StatusBadRequest, "BodyValidationError", "Request body validation error: "+msg)
	}
	obj, repeated, err := jsonObject(body)
	if err != nil {
		c.violation(invalid("Invalid JSON"), "%v", err)
		return tokenRequest{}
	}
	for _, k := range repeated {
		c.violation(invalid("Duplicate attributes '"+clip(k)+"'"), "JSON key %q repeated", clip(k))
	}
	for _, k := range sortedKeys(obj) {
		if k != "grant_type" {
			c.violation(invalid("Unexpected attributes '"+clip(k)+"'"), "unexpected JSON key %q", clip(k))
		}
	}
	raw, ok := obj["grant_type"]
	if !ok {
		c.violation(invalid("Missing attributes 'grant_type'"), "no grant_type in the JSON body")
		return tokenRequest{}
	}
	var grant string
	if err := json.Unmarshal(raw, &grant); err != nil || grant != "client_credentials" {
		c.violation(invalid("Invalid grant_type"), "grant_type is %s, want \"client_credentials\"", clip(string(raw)))
	}
	return tokenRequest{}
}
