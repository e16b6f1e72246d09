package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Verification failures. Reason maps each to a short metric label; the
// HTTP edge answers 401 for all of them.
var (
	ErrMalformed = errors.New("auth: malformed token")
	ErrExpired   = errors.New("auth: token expired or not yet valid")
	ErrSignature = errors.New("auth: bad signature or unknown key")
	ErrClaims    = errors.New("auth: token not for this project or not a signed-in user")
)

// Role and audience of a signed-in Supabase user's access token.
const (
	AuthenticatedRole = "authenticated"
	AuthenticatedAud  = "authenticated"
)

// Claims is what the relay needs of a verified token.
type Claims struct {
	Subject string
	Role    string
	// ValidUntil is the exp claim plus the verifier's leeway: the last
	// moment Verify accepts the token. The relay ends a browser's session
	// then, so a reconnect with the same token is refused, never looped.
	ValidUntil time.Time
	// Raw is every claim, as the access check passes them to Postgres in
	// request.jwt.claims, exactly as PostgREST does.
	Raw map[string]any
}

// Options configure a Verifier. At least one of JWKSURL and Secret is needed.
type Options struct {
	// JWKSURL is <SUPABASE_URL>/auth/v1/.well-known/jwks.json: ES256/RS256
	// keys of projects on asymmetric signing keys.
	JWKSURL string
	// Secret is the legacy HS256 JWT secret (SUPABASE_JWT_SECRET).
	Secret []byte
	// Issuer, when set, must equal the iss claim (<SUPABASE_URL>/auth/v1).
	Issuer string
	// HTTPClient fetches the JWKS. Default: a client with a 10 s timeout.
	// Its responses are read up to MaxJWKSBytes (through a copy: the
	// given client is not changed).
	HTTPClient *http.Client
	// RefreshInterval is how often the JWKS is refetched. Default 10 min:
	// Supabase publishes a new key before it signs with it, and removes
	// revoked ones, so a rotation is seen within this interval anyway.
	RefreshInterval time.Duration
	// UnknownKIDEvery rate-limits refetches caused by an unknown kid.
	// Default 30 s: a rotation is picked up at once, while forged tokens
	// with random kids cannot make the relay hammer the auth server.
	UnknownKIDEvery time.Duration
	// Leeway tolerates clock skew on exp/nbf/iat. Default 30 s.
	Leeway time.Duration
	// Now is the clock for expiry checks. Default time.Now.
	Now func() time.Time
	// Registerer gets nbiot_relay_jwks_fetch_failures_total when JWKSURL
	// is set (may be nil).
	Registerer prometheus.Registerer
	// Logger gets a warning per failed JWKS fetch (default: none). Their
	// number is bounded: one per RefreshInterval, plus at most one per
	// UnknownKIDEvery for tokens with an unknown kid.
	Logger *slog.Logger
}

// Verifier checks access tokens. It is safe for concurrent use.
type Verifier struct {
	jwks    keyfunc.Keyfunc
	secret  []byte
	parser  *jwt.Parser
	timeout time.Duration
	leeway  time.Duration
}

// NewVerifier builds a Verifier. With a JWKS URL it starts fetching the key
// set in the background (a failed first fetch is retried on demand, so the
// relay starts while the auth server is unreachable); ctx ends the refresh.
func NewVerifier(ctx context.Context, o Options) (*Verifier, error) {
	if o.JWKSURL == "" && len(o.Secret) == 0 {
		return nil, errors.New("auth: need a JWKS URL or an HS256 secret")
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = 10 * time.Minute
	}
	if o.UnknownKIDEvery <= 0 {
		o.UnknownKIDEvery = 30 * time.Second
	}
	if o.Leeway <= 0 {
		o.Leeway = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	v := &Verifier{secret: o.Secret, timeout: 10 * time.Second, leeway: o.Leeway}
	var methods []string
	if len(o.Secret) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if o.JWKSURL != "" {
		methods = append(methods, jwt.SigningMethodES256.Alg(), jwt.SigningMethodRS256.Alg())
		failures := prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nbiot_relay_jwks_fetch_failures_total",
			Help: fmt.Sprintf("JWKS fetches (first, periodic, or for an unknown kid) that failed: unreachable, bad status, invalid, or larger than %d KiB. The keys already held stay in use.", MaxJWKSBytes>>10),
		})
		if o.Registerer != nil {
			o.Registerer.MustRegister(failures)
		}
		kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{o.JWKSURL}, keyfunc.Override{
			Client:          limitClient(o.HTTPClient, MaxJWKSBytes),
			HTTPTimeout:     o.HTTPClient.Timeout,
			RefreshInterval: o.RefreshInterval,
			// The wait bounds the limiter and the refetch together; a
			// request arriving inside the rate limit fails at once
			// (rate.Limiter.Wait gives up when the wait exceeds it).
			RateLimitWaitMax:  v.timeout,
			RefreshUnknownKID: rate.NewLimiter(rate.Every(o.UnknownKIDEvery), 1),
			// Called for every failed fetch, including the first and
			// those for an unknown kid. The error names the URL (no
			// secret: the JWKS is public) and never a token, since the
			// fetch carries none.
			RefreshErrorHandlerFunc: func(string) func(context.Context, error) {
				return func(_ context.Context, err error) {
					failures.Inc()
					o.Logger.Warn("JWKS fetch failed", "err", err)
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("auth: JWKS: %w", err)
		}
		v.jwks = kf
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(AuthenticatedAud),
		jwt.WithLeeway(o.Leeway),
		jwt.WithTimeFunc(o.Now),
	}
	if o.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(o.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Verify checks the token's signature, expiry, audience, issuer and role
// and returns its claims. Errors wrap one of the sentinels above and never
// contain the token.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if len(token) > MaxTokenLen {
		return nil, ErrMalformed
	}
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	mc := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, mc, v.keyfunc(ctx))
	if err != nil {
		return nil, classify(err)
	}
	c := &Claims{Raw: mc}
	if exp, err := mc.GetExpirationTime(); err == nil && exp != nil {
		c.ValidUntil = exp.Time.Add(v.leeway)
	}
	c.Subject, _ = mc["sub"].(string)
	c.Role, _ = mc["role"].(string)
	if c.Subject == "" {
		return nil, fmt.Errorf("%w: no sub", ErrClaims)
	}
	if c.Role != AuthenticatedRole {
		return nil, fmt.Errorf("%w: role is not %s", ErrClaims, AuthenticatedRole)
	}
	return c, nil
}

// keyfunc picks the key by algorithm: HS256 only ever uses the secret and
// ES256/RS256 only the JWKS, so a public key can never be used as an HMAC
// secret (jwt/v5 also checks the key type per method).
func (v *Verifier) keyfunc(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		switch t.Method.Alg() {
		case jwt.SigningMethodHS256.Alg():
			if len(v.secret) == 0 {
				return nil, errors.New("no HS256 secret configured")
			}
			return v.secret, nil
		default:
			if v.jwks == nil {
				return nil, errors.New("no JWKS configured")
			}
			return v.jwks.KeyfuncCtx(ctx)(t)
		}
	}
}

func classify(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ErrMalformed
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet),
		errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ErrExpired
	case errors.Is(err, jwt.ErrTokenInvalidAudience), errors.Is(err, jwt.ErrTokenInvalidIssuer),
		errors.Is(err, jwt.ErrTokenRequiredClaimMissing), errors.Is(err, jwt.ErrTokenInvalidClaims):
		return ErrClaims
	default:
		// Signature mismatch, unknown kid, algorithm not allowed.
		return ErrSignature
	}
}

// Reason is a short label for a verification or extraction error, for the
// auth failure metric and logs.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrNoToken):
		return "missing"
	case errors.Is(err, ErrTokenTooLarge), errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrClaims):
		return "claims"
	case errors.Is(err, ErrSignature):
		return "signature"
	default:
		return "other"
	}
}
