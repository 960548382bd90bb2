package grants

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // G505: x5t is defined as the SHA-1 thumbprint (RFC 7515 section 4.1.7)
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Client assertions (RFC 7523 section 2.2, RFC 7521, OpenID Connect Core
// section 9): a JWT signed with the client's private key (private_key_jwt)
// or with HMAC over its secret (client_secret_jwt), made fresh for every
// token request. Signing is go-jose's; the key is read and parsed once,
// when the client is made.

// Alg is a JWS algorithm a client assertion is signed with (RFC 7518).
type Alg string

// Signing algorithms.
const (
	RS256 Alg = "RS256" // RSASSA-PKCS1-v1_5 with SHA-256
	RS384 Alg = "RS384"
	RS512 Alg = "RS512"
	PS256 Alg = "PS256" // RSASSA-PSS with SHA-256
	PS384 Alg = "PS384"
	PS512 Alg = "PS512"
	ES256 Alg = "ES256" // ECDSA P-256 with SHA-256
	ES384 Alg = "ES384" // ECDSA P-384 with SHA-384
	EdDSA Alg = "EdDSA" // Ed25519
	HS256 Alg = "HS256" // HMAC with SHA-256, over the client secret
	HS384 Alg = "HS384"
	HS512 Alg = "HS512"
)

// Algs lists the algorithms a config may name, in the order error
// messages give them.
var Algs = []Alg{RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512}

// ParseAlg reads an algorithm's name. "none" is refused: an unsigned
// assertion proves nothing.
func ParseAlg(s string) (Alg, error) {
	if strings.EqualFold(s, "none") {
		return "", fmt.Errorf("alg none is refused: an unsigned assertion proves nothing (want %s)", oneOf(Algs))
	}
	return parseName("alg", s, Algs)
}

// hmac reports whether a signs with a shared secret.
func (a Alg) hmac() bool { return a == HS256 || a == HS384 || a == HS512 }

// Assertion configures the client assertions of private_key_jwt and
// client_secret_jwt. Files are read by NewClient, not by Validate.
type Assertion struct {
	// Key is the PEM file of the private key (private_key_jwt): RSA,
	// ECDSA P-256/P-384 or Ed25519, in PKCS#8, PKCS#1 or SEC 1.
	Key string `json:",omitempty"`
	// Alg is the signing algorithm; empty: from the key (RSA RS256, P-256
	// ES256, P-384 ES384, Ed25519 EdDSA), HS256 for client_secret_jwt.
	Alg Alg `json:",omitempty"`
	// KeyID is the JOSE header kid, when set.
	KeyID string `json:",omitempty"`
	// X5T is the PEM file of the key's certificate, whose SHA-1 and
	// SHA-256 thumbprints go in the JOSE headers x5t and x5t#S256.
	X5T string `json:",omitempty"`
	// Audience is the aud claim; empty: the token URL.
	Audience string `json:",omitempty"`
	// Lifetime is exp - iat; zero: DefaultAssertionLifetime.
	Lifetime time.Duration `json:",omitempty"`
	// Claims are extra string claims.
	Claims map[string]string `json:",omitempty"`
}

// Bounds of a client assertion.
const (
	// DefaultAssertionLifetime is exp - iat when Assertion.Lifetime is 0.
	DefaultAssertionLifetime = 60 * time.Second
	// MaxAssertionLifetime bounds Assertion.Lifetime: an assertion is a
	// credential for as long as it lives.
	MaxAssertionLifetime = time.Hour
	// JWTBearer is the client_assertion_type of RFC 7523.
	JWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" //nolint:gosec // G101: a URN, not a credential
	// maxKeyFile bounds a key or certificate file.
	maxKeyFile = 1 << 20
	// minRSABits is the smallest RSA key accepted (RFC 7518 section 3.3).
	minRSABits = 2048
	// jtiBytes is the randomness of a jti: 128 bits.
	jtiBytes = 16
)

// registeredClaims are the claims the module sets itself.
var registeredClaims = map[string]bool{"iss": true, "sub": true, "aud": true, "exp": true, "iat": true, "nbf": true, "jti": true}

// validateAssertion checks the assertion settings that need no file.
func (c Config) validateAssertion() error {
	m, a := c.ClientAuth, c.Assertion
	if !m.signs() {
		if a != nil {
			return fmt.Errorf("assertion is only used with client_auth %s or %s", AuthPrivateKeyJWT, AuthClientSecretJWT)
		}
		return nil
	}
	if a == nil {
		a = &Assertion{}
	}
	switch m {
	case AuthPrivateKeyJWT:
		if a.Key == "" {
			return fmt.Errorf("client_auth %s needs assertion { key <pem file> }", m)
		}
		if a.Alg != "" && a.Alg.hmac() {
			return fmt.Errorf("alg %s signs with the client secret: use client_auth %s, or an alg that fits the key", a.Alg, AuthClientSecretJWT)
		}
	case AuthClientSecretJWT:
		if a.Key != "" {
			return fmt.Errorf("client_auth %s signs with client_secret: assertion key is for %s", m, AuthPrivateKeyJWT)
		}
		if a.X5T != "" {
			return fmt.Errorf("assertion x5t names the certificate of a key: it needs client_auth %s", AuthPrivateKeyJWT)
		}
		if a.Alg != "" && !a.Alg.hmac() {
			return fmt.Errorf("client_auth %s signs with HMAC (%s), not %s", m, oneOf([]Alg{HS256, HS384, HS512}), a.Alg)
		}
	case AuthBasic, AuthBody, AuthNone, AuthTLSClient:
	}
	if a.Alg != "" {
		if _, err := ParseAlg(string(a.Alg)); err != nil {
			return err
		}
	}
	switch {
	case a.Lifetime < 0:
		return fmt.Errorf("assertion lifetime must be positive")
	case a.Lifetime > 0 && a.Lifetime < time.Second:
		return fmt.Errorf("assertion lifetime must be at least 1s")
	case a.Lifetime > MaxAssertionLifetime:
		return fmt.Errorf("assertion lifetime must be at most %v: an assertion is a credential while it lives", MaxAssertionLifetime)
	}
	for name := range a.Claims {
		if name == "" {
			return fmt.Errorf("assertion claim needs a name")
		}
		if registeredClaims[name] {
			return fmt.Errorf("assertion claim %q is set by the module itself", name)
		}
	}
	return nil
}

// assertionSigner makes the client assertions of one client.
type assertionSigner struct {
	alg      Alg
	signer   jose.Signer
	clientID string
	audience string // "" for the token URL
	lifetime int64  // seconds
	claims   map[string]string
	now      func() time.Time
}

// newAssertionSigner reads and checks the assertion's key and certificate
// (private_key_jwt) or takes the client secret (client_secret_jwt), picks
// the algorithm and builds the signer, which it tries once. Errors name the
// file and the reason, never key material.
func newAssertionSigner(c Config) (*assertionSigner, error) {
	a := c.Assertion
	if a == nil {
		a = &Assertion{}
	}
	id, secret := c.clientCredentials()
	var key any
	alg := a.Alg
	switch c.ClientAuth {
	case AuthClientSecretJWT:
		if alg == "" {
			alg = HS256
		}
		if need := hmacMinBytes(alg); len(secret) < need {
			return nil, fmt.Errorf("client_auth %s with %s needs a client_secret of at least %d bytes (RFC 7518 section 3.2)", c.ClientAuth, alg, need)
		}
		key = []byte(secret)
	case AuthPrivateKeyJWT:
		signer, err := loadPrivateKey(a.Key)
		if err != nil {
			return nil, fmt.Errorf("assertion key %s: %v", a.Key, err)
		}
		if alg == "" {
			alg = defaultAlg(signer)
		}
		if err := fits(alg, signer); err != nil {
			return nil, fmt.Errorf("assertion key %s: %v", a.Key, err)
		}
		key = signer
	case AuthBasic, AuthBody, AuthNone, AuthTLSClient:
		return nil, fmt.Errorf("client_auth %s sends no assertion", c.ClientAuth)
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if a.KeyID != "" {
		opts = opts.WithHeader("kid", a.KeyID)
	}
	if a.X5T != "" {
		cert, err := loadCertificate(a.X5T)
		if err != nil {
			return nil, fmt.Errorf("assertion x5t %s: %v", a.X5T, err)
		}
		pub, _ := key.(crypto.Signer)
		if eq, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || pub == nil || !eq.Equal(pub.Public()) {
			return nil, fmt.Errorf("assertion x5t %s: the certificate is not that of the assertion key %s", a.X5T, a.Key)
		}
		sha1Sum := sha1.Sum(cert.Raw) //nolint:gosec // G401: x5t is the SHA-1 thumbprint by definition
		sha256Sum := sha256.Sum256(cert.Raw)
		opts = opts.WithHeader("x5t", base64.RawURLEncoding.EncodeToString(sha1Sum[:])).
			WithHeader("x5t#S256", base64.RawURLEncoding.EncodeToString(sha256Sum[:]))
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key}, opts)
	if err != nil {
		return nil, fmt.Errorf("assertion: %s signer: %v", alg, err)
	}
	lifetime := a.Lifetime
	if lifetime == 0 {
		lifetime = DefaultAssertionLifetime
	}
	s := &assertionSigner{
		alg:      alg,
		signer:   signer,
		clientID: id,
		audience: a.Audience,
		lifetime: int64(lifetime / time.Second),
		claims:   a.Claims,
		now:      time.Now,
	}
	// One trial, so that what the library would refuse is refused now,
	// at provision, rather than at the first token request.
	if _, err := s.assertion("https://trial.invalid/token"); err != nil {
		return nil, fmt.Errorf("assertion: signing with %s: %v", alg, err)
	}
	return s, nil
}

// assertion makes a new client assertion for a request to tokenURL: iss
// and sub the client id, aud the audience (default: tokenURL), iat now, exp
// iat + lifetime, a fresh jti of 128 random bits, and the extra claims.
func (s *assertionSigner) assertion(tokenURL string) (string, error) {
	var jti [jtiBytes]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("assertion jti: %v", err)
	}
	aud := s.audience
	if aud == "" {
		aud = tokenURL
	}
	now := s.now().Unix()
	claims := make(map[string]any, len(registeredClaims)+len(s.claims))
	for k, v := range s.claims {
		claims[k] = v
	}
	claims["iss"] = s.clientID
	claims["sub"] = s.clientID
	claims["aud"] = aud
	claims["iat"] = now
	claims["exp"] = now + s.lifetime
	claims["jti"] = base64.RawURLEncoding.EncodeToString(jti[:])
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("assertion claims: %v", err)
	}
	jws, err := s.signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// hmacMinBytes is the smallest key RFC 7518 section 3.2 allows for alg: the
// size of the hash.
func hmacMinBytes(alg Alg) int {
	switch alg {
	case HS384:
		return 48
	case HS512:
		return 64
	case HS256, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA:
	}
	return 32
}

// defaultAlg is the algorithm a key signs with when alg is not set.
func defaultAlg(key crypto.Signer) Alg {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P384() {
			return ES384
		}
		return ES256
	case ed25519.PrivateKey:
		return EdDSA
	}
	return RS256
}

// fits reports whether key can sign with alg.
func fits(alg Alg, key crypto.Signer) error {
	var want string
	switch alg {
	case RS256, RS384, RS512, PS256, PS384, PS512:
		if _, ok := key.(*rsa.PrivateKey); ok {
			return nil
		}
		want = "an RSA key"
	case ES256, ES384:
		curve := elliptic.P256()
		if alg == ES384 {
			curve = elliptic.P384()
		}
		if k, ok := key.(*ecdsa.PrivateKey); ok && k.Curve == curve {
			return nil
		}
		want = "an ECDSA " + curve.Params().Name + " key"
	case EdDSA:
		if _, ok := key.(ed25519.PrivateKey); ok {
			return nil
		}
		want = "an Ed25519 key"
	case HS256, HS384, HS512:
		return fmt.Errorf("alg %s signs with the client secret, not with a key", alg)
	}
	return fmt.Errorf("alg %s needs %s; this is %s", alg, want, describeKey(key))
}

// describeKey names a key's type and size, for errors.
func describeKey(key crypto.Signer) string {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return fmt.Sprintf("an RSA %d-bit key", k.N.BitLen())
	case *ecdsa.PrivateKey:
		return "an ECDSA " + k.Curve.Params().Name + " key"
	case ed25519.PrivateKey:
		return "an Ed25519 key"
	}
	return fmt.Sprintf("a %T", key)
}

// errEncrypted is the refusal of an encrypted key.
var errEncrypted = errors.New("the key is encrypted: decrypt it into a file only Caddy can read " +
	"(openssl pkey -in encrypted.pem -out key.pem), the module takes no passphrase")

// loadPrivateKey reads the PEM file at path and parses its private key.
func loadPrivateKey(path string) (crypto.Signer, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	return parsePrivateKey(data)
}

// parsePrivateKey reads the one private key of PEM data: PKCS#8 (PRIVATE
// KEY), PKCS#1 (RSA PRIVATE KEY) or SEC 1 (EC PRIVATE KEY); other blocks
// (EC PARAMETERS, certificates) are passed over. RSA keys must have at
// least 2048 bits, ECDSA keys be P-256 or P-384. Errors carry no key
// material.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	var (
		found  crypto.Signer
		others []string
	)
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			break
		}
		data = rest
		switch block.Type {
		case "ENCRYPTED PRIVATE KEY":
			return nil, errEncrypted
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			if strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED") {
				return nil, errEncrypted
			}
			if found != nil {
				return nil, errors.New("the file holds more than one private key")
			}
			key, err := parseKeyBlock(block)
			if err != nil {
				return nil, err
			}
			found = key
		default:
			others = append(others, block.Type)
		}
	}
	if found != nil {
		return found, nil
	}
	if len(others) == 0 {
		return nil, errors.New("no PEM data: want a PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")
	}
	hint := ""
	if strings.Contains(strings.Join(others, ","), "OPENSSH PRIVATE KEY") {
		hint = "; convert an OpenSSH key with ssh-keygen -p -m PKCS8 -f <file>"
	}
	return nil, fmt.Errorf("no private key, only PEM blocks %s: want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY%s",
		strings.Join(others, ", "), hint)
}

// parseKeyBlock parses one private key block and checks the key.
func parseKeyBlock(block *pem.Block) (crypto.Signer, error) {
	var (
		key    any
		err    error
		format string
	)
	switch block.Type {
	case "PRIVATE KEY":
		format = "PKCS#8"
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		format = "PKCS#1"
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		format = "SEC 1"
		key, err = x509.ParseECPrivateKey(block.Bytes)
	}
	if err != nil {
		// The parser's words may quote the DER; keep to the block's name.
		return nil, fmt.Errorf("PEM block %s is not a valid %s private key", block.Type, format)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("an RSA key of %d bits is too small: want at least %d (RFC 7518 section 3.3)", bits, minRSABits)
		}
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("an ECDSA %s key is not supported: want P-256 (ES256) or P-384 (ES384)", k.Curve.Params().Name)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	case *ecdh.PrivateKey:
		return nil, errors.New("an X25519 key cannot sign: want RSA, ECDSA P-256/P-384 or Ed25519")
	}
	return nil, fmt.Errorf("a %T cannot sign a client assertion", key)
}

// loadCertificate reads the first certificate of the PEM file at path.
func loadCertificate(path string) (*x509.Certificate, error) {
	data, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		data = rest
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, errors.New("PEM block CERTIFICATE is not a valid X.509 certificate")
		}
		return cert, nil
	}
}

// readBounded reads a regular file of at most maxKeyFile bytes: a device,
// a pipe or a huge file is refused rather than read for ever.
func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the configured key file
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, unwrapPath(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, unwrapPath(err)
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("larger than %d bytes: not a PEM key or certificate", maxKeyFile)
	}
	return data, nil
}

// unwrapPath drops the path from an *os.PathError, which the caller names
// already: "open: no such file or directory".
func unwrapPath(err error) error {
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}
