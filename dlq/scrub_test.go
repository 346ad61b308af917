package dlq

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// Fake secrets in the shapes of real ones, built by concatenation so that no scanner
// takes this file for a leak.
const (
	fakeTokenBody22      = "11AAAAAA0" + "bbbbbbbbbbbbb"
	fakeTokenBody35      = "SyA0b1c2d3e4f5g6h7" + "i8j9k-L_MnOpQrStU"
	fakeTokenBody36      = "0a1b2c3d4e5f6g7h8i" + "9jAkBlCmDnEoFpGqHr"
	fakeTokenBody59      = "Zz0123456789abcdefghijklmnopqrstuvwx" + "yzABCDEFGHIJKLMNOPQRSTU"
	fakeSlackBody        = "2048-1024-" + "AbCdEfGhIjKlMnOpQrStUvWx"
	fakeSlackWebhookPath = "T0123ABCD/B0456EFGH/" + "abcdEFGHijklMNOPqrstUVWX"
)

// scrubSecretTests are texts holding secrets, which ScrubError must redact.
var scrubSecretTests = []struct {
	name    string
	in      string
	secrets []string
	want    string // checked when not empty
}{
	{
		name:    "PostgresURL",
		in:      "dial postgres://user:s3cr3tPW@db.internal:5432/app?sslmode=disable: refused",
		secrets: []string{"s3cr3tPW"},
		want:    "dial postgres://user:REDACTED@db.internal:5432/app?sslmode=disable: refused",
	},
	{
		name:    "AnySchemeURL",
		in:      "amqp://guest:hunter2@rabbit:5672/ down",
		secrets: []string{"hunter2"},
		want:    "amqp://guest:REDACTED@rabbit:5672/ down",
	},
	{
		name:    "URLPasswordOnly",
		in:      "redis://:r3disPW@cache:6379/0",
		secrets: []string{"r3disPW"},
		want:    "redis://:REDACTED@cache:6379/0",
	},
	{
		name:    "URLPasswordWithAt",
		in:      "postgres://u:p@ss/w0rd@db/app",
		secrets: []string{"p@ss", "w0rd"},
		want:    "postgres://u:REDACTED@db/app",
	},
	{
		name:    "URLTokenAsUser",
		in:      "clone https://token:ghTok3n@github.com/a/b failed",
		secrets: []string{"ghTok3n"},
		want:    "clone https://token:REDACTED@github.com/a/b failed",
	},
	{
		name:    "MySQLDSN",
		in:      "open root:my5qlPW@tcp(127.0.0.1:3306)/app: refused",
		secrets: []string{"my5qlPW"},
		want:    "open root:REDACTED@tcp(127.0.0.1:3306)/app: refused",
	},
	{
		name:    "KeyValuePassword",
		in:      "host=db user=bob password=kvS3cret dbname=app",
		secrets: []string{"kvS3cret"},
		want:    "host=db user=bob password=REDACTED dbname=app",
	},
	{
		name:    "KeyValuePasswordSingleQuoted",
		in:      "host=db password='with space' dbname=app",
		secrets: []string{"with space"},
		want:    "host=db password='REDACTED' dbname=app",
	},
	{
		name:    "KeyValuePasswordDoubleQuoted",
		in:      `PASSWORD = "a\"b c" port=5432`,
		secrets: []string{`a\"b c`, "b c"},
		want:    `PASSWORD = "REDACTED" port=5432`,
	},
	{
		name:    "Pwd",
		in:      "Server=x;Uid=sa;Pwd=mssqlPW;",
		secrets: []string{"mssqlPW"},
		want:    "Server=x;Uid=sa;Pwd=REDACTED;",
	},
	{
		name:    "Passwd",
		in:      "PassWD=pa55wd host=x",
		secrets: []string{"pa55wd"},
		want:    "PassWD=REDACTED host=x",
	},
	{
		name:    "QueryString",
		in:      "GET https://api.example.com/v1?token=t0k1&access_token=t0k2&api_key=t0k3&apikey=t0k4&secret=t0k5&client_secret=t0k6&sig=t0k7&signature=t0k8&page=2: 401",
		secrets: []string{"t0k1", "t0k2", "t0k3", "t0k4", "t0k5", "t0k6", "t0k7", "t0k8"},
		want: "GET https://api.example.com/v1?token=REDACTED&access_token=REDACTED&api_key=REDACTED&apikey=REDACTED" +
			"&secret=REDACTED&client_secret=REDACTED&sig=REDACTED&signature=REDACTED&page=2: 401",
	},
	{
		name:    "AmazonPresignedURL",
		in:      "GET https://b.s3.amazonaws.com/k?X-Amz-Signature=abcdef0123&X-Amz-Security-Token=FwoGZX: 403",
		secrets: []string{"abcdef0123", "FwoGZX"},
	},
	{
		name:    "BearerToken",
		in:      "Bearer abc.def rejected",
		secrets: []string{"abc.def"},
		want:    "Bearer REDACTED rejected",
	},
	{
		name:    "BearerTokenWithEquals",
		in:      "Bearer abc=def=: rejected",
		secrets: []string{"abc", "def"},
		want:    "Bearer REDACTED: rejected",
	},
	{
		name:    "AuthorizationBasic",
		in:      "Authorization: Basic xyz",
		secrets: []string{"xyz"},
		want:    "Authorization: Basic REDACTED",
	},
	{
		name:    "AuthorizationBearer",
		in:      `header "authorization: bearer eyabc123" refused`,
		secrets: []string{"eyabc123"},
	},
	{
		name:    "AuthorizationWithoutScheme",
		in:      "Authorization: rawKey123, retry",
		secrets: []string{"rawKey123"},
	},
	{
		name:    "BasicCredentialInText",
		in:      "sent basic dXNlcjpwYXNz to proxy",
		secrets: []string{"dXNlcjpwYXNz"},
		want:    "sent basic REDACTED to proxy",
	},
	{
		name:    "CookieHeader",
		in:      "Cookie: theme=dark; sid=c00kie\nnext",
		secrets: []string{"c00kie"},
		want:    "Cookie: REDACTED\nnext",
	},
	{
		name:    "JSONMembers",
		in:      `400: {"user":"bob","password":"js0nPW","refresh_token":"js0nTok"}`,
		secrets: []string{"js0nPW", "js0nTok"},
		want:    `400: {"user":"bob","password":"REDACTED","refresh_token":"REDACTED"}`,
	},
	{
		name:    "StructFields",
		in:      "config {User:bob Password:structPW Host:db}",
		secrets: []string{"structPW"},
		want:    "config {User:bob Password:REDACTED Host:db}",
	},
	{
		name:    "PairInsideValue",
		in:      `msg="token=innerTok" err:secret=innerSec`,
		secrets: []string{"innerTok", "innerSec"},
	},
	{
		name:    "AWSAccessKey",
		in:      "key AKIAIOSFODNN7EXAMPLE denied",
		secrets: []string{"AKIAIOSFODNN7EXAMPLE", "IOSFODNN7"},
		want:    "key REDACTED denied",
	},
	{
		name:    "JWT",
		in:      "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl expired",
		secrets: []string{"eyJzdWIiOiIxIn0", "c2lnbmF0dXJl"},
	},
	{
		name:    "PrivateKey",
		in:      "bad key -----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY----- end",
		secrets: []string{"MIIBOgIBAAJBAK"},
		want:    "bad key REDACTED end",
	},
	{
		name:    "UnterminatedQuotedPassword",
		in:      `connect host=db password="half a secret`,
		secrets: []string{"half", "secret"},
		want:    `connect host=db password="REDACTED`,
	},
	{
		name:    "UnterminatedJSONMember",
		in:      `400: {"user":"bob","client_secret":"cut sh`,
		secrets: []string{"cut sh"},
		want:    `400: {"user":"bob","client_secret":"REDACTED`,
	},
	{
		name:    "Several",
		in:      "postgres://a:pw1@h/db password=pw2 Bearer pw3 AKIAABCDEFGHIJKLMNOP",
		secrets: []string{"pw1", "pw2", "pw3", "AKIAABCDEFGHIJKLMNOP"},
	},
	{
		name:    "YAMLPassword",
		in:      "password: hunter2",
		secrets: []string{"hunter2"},
		want:    "password: REDACTED",
	},
	{
		name:    "YAMLPass",
		in:      "smtp:\n  user: bob\n  pass: hunter2",
		secrets: []string{"hunter2"},
		want:    "smtp:\n  user: bob\n  pass: REDACTED",
	},
	{
		name:    "YAMLBlock",
		in:      "invalid config:\n  host: db\n  password: correct horse battery\n  port: 5432",
		secrets: []string{"correct", "horse", "battery"},
		want:    "invalid config:\n  host: db\n  password: REDACTED\n  port: 5432",
	},
	{
		name:    "YAMLSecretQuoted",
		in:      "  client_secret: 'with space' # prod\r\n  region: eu",
		secrets: []string{"with space"},
		want:    "  client_secret: 'REDACTED' # prod\r\n  region: eu",
	},
	{
		name:    "YAMLListItem",
		in:      "tokens:\n  - token: t0kenV4lue\n  - access_token: t0kenV4lu2",
		secrets: []string{"t0kenV4lue", "t0kenV4lu2"},
		want:    "tokens:\n  - token: REDACTED\n  - access_token: REDACTED",
	},
	{
		name:    "YAMLFlow",
		in:      "decode {user: bob, password: fl0w PW, api_key: fl0wK3y}: bad",
		secrets: []string{"fl0w", "PW", "fl0wK3y"},
		want:    "decode {user: bob, password: REDACTED, api_key: REDACTED}: bad",
	},
	{
		name:    "YAMLInErrorChain",
		in:      "load config: secret: s3cr3tV4l rejected; auth: token: t0kV4l",
		secrets: []string{"s3cr3tV4l", "t0kV4l"},
		want:    "load config: secret: REDACTED rejected; auth: token: REDACTED",
	},
	{
		name:    "XAPIKeyHeader",
		in:      "GET /v1/orders with X-Api-Key: k3yV4lue: 401",
		secrets: []string{"k3yV4lue"},
		want:    "GET /v1/orders with X-Api-Key: REDACTED: 401",
	},
	{
		name:    "XAuthTokenHeader",
		in:      "request headers: x-auth-token: aut0kV4l, accept: */*",
		secrets: []string{"aut0kV4l"},
		want:    "request headers: x-auth-token: REDACTED, accept: */*",
	},
	{
		name:    "XAmzSecurityTokenHeader",
		in:      `sent "X-Amz-Security-Token": IQoJb3JpZ2luX2VjE rejected`,
		secrets: []string{"IQoJb3JpZ2luX2VjE"},
		want:    `sent "X-Amz-Security-Token": REDACTED rejected`,
	},
	{
		name:    "APIKeyHeader",
		in:      "upstream said 403 to Api-Key: ak_9f8e7d6c",
		secrets: []string{"ak_9f8e7d6c"},
		want:    "upstream said 403 to Api-Key: REDACTED",
	},
	{
		name:    "PrivateTokenHeader",
		in:      "gitlab: Private-Token: pr1vT0k rejected",
		secrets: []string{"pr1vT0k"},
		want:    "gitlab: Private-Token: REDACTED rejected",
	},
	{
		name:    "XVaultTokenHeader",
		in:      "vault: 403 for X-Vault-Token: hvs.CAESIJ0",
		secrets: []string{"hvs.CAESIJ0"},
		want:    "vault: 403 for X-Vault-Token: REDACTED",
	},
	{
		name:    "ProxyAuthorizationHeader",
		in:      "proxy: Proxy-Authorization: Basic dXNlcjpwYXNz refused",
		secrets: []string{"dXNlcjpwYXNz"},
		want:    "proxy: Proxy-Authorization: Basic REDACTED refused",
	},
	{
		name:    "EnvSecretAccessKey",
		in:      "env AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY AWS_REGION=eu-west-1",
		secrets: []string{"wJalrXUtnFEMI"},
		want:    "env AWS_SECRET_ACCESS_KEY=REDACTED AWS_REGION=eu-west-1",
	},
	{
		name:    "EnvSecretAccessKeyColon",
		in:      "bad env AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, AWS_SESSION_TOKEN: FwoGZXIvYXdzE",
		secrets: []string{"wJalrXUtnFEMI", "FwoGZXIvYXdzE"},
		want:    "bad env AWS_SECRET_ACCESS_KEY: REDACTED, AWS_SESSION_TOKEN: REDACTED",
	},
	{
		name:    "EnvSessionTokenAndPassword",
		in:      "AWS_SESSION_TOKEN=FwoGZXIvYXdzE DB_PASSWORD=dbPassW0rd",
		secrets: []string{"FwoGZXIvYXdzE", "dbPassW0rd"},
		want:    "AWS_SESSION_TOKEN=REDACTED DB_PASSWORD=REDACTED",
	},
	{
		name:    "EnvDatabaseURL",
		in:      "DATABASE_URL=postgres://u:p4ss@h/app",
		secrets: []string{"p4ss"},
		want:    "DATABASE_URL=postgres://u:REDACTED@h/app",
	},
	{
		name:    "URLLoneToken",
		in:      "dial nats://s3cr3ttoken@host:4222: refused",
		secrets: []string{"s3cr3ttoken"},
		want:    "dial nats://REDACTED@host:4222: refused",
	},
	{
		name:    "GitHubTokenInURL",
		in:      "clone https://" + "ghp_" + fakeTokenBody36 + "@github.com/org/repo.git failed",
		secrets: []string{fakeTokenBody36},
		want:    "clone https://REDACTED@github.com/org/repo.git failed",
	},
	{
		name:    "GitHubAccessTokenInURL",
		in:      "push https://x-access-token:" + "ghs_" + fakeTokenBody36 + "@github.com/org/repo: 403",
		secrets: []string{fakeTokenBody36},
		want:    "push https://x-access-token:REDACTED@github.com/org/repo: 403",
	},
	{
		name:    "GitHubPersonalToken",
		in:      "github: bad credentials for " + "ghp_" + fakeTokenBody36,
		secrets: []string{fakeTokenBody36},
		want:    "github: bad credentials for REDACTED",
	},
	{
		name:    "GitHubOAuthToken",
		in:      "revoked " + "gho_" + fakeTokenBody36 + ".",
		secrets: []string{fakeTokenBody36},
		want:    "revoked REDACTED.",
	},
	{
		name:    "GitHubUserToken",
		in:      "(" + "ghu_" + fakeTokenBody36 + ")",
		secrets: []string{fakeTokenBody36},
		want:    "(REDACTED)",
	},
	{
		name:    "GitHubServerToken",
		in:      "installation token " + "ghs_" + fakeTokenBody36 + " expired",
		secrets: []string{fakeTokenBody36},
		want:    "installation token REDACTED expired",
	},
	{
		name:    "GitHubRefreshToken",
		in:      "refresh " + "ghr_" + fakeTokenBody36 + " rejected",
		secrets: []string{fakeTokenBody36},
		want:    "refresh REDACTED rejected",
	},
	{
		name:    "GitHubFineGrainedToken",
		in:      "using " + "github_pat_" + fakeTokenBody22 + "_" + fakeTokenBody59 + ": 401",
		secrets: []string{fakeTokenBody22, fakeTokenBody59},
		want:    "using REDACTED: 401",
	},
	{
		name:    "GitLabToken",
		in:      "gitlab said 401 to " + "glpat-" + fakeTokenBody22,
		secrets: []string{fakeTokenBody22},
		want:    "gitlab said 401 to REDACTED",
	},
	{
		name:    "NPMToken",
		in:      "npm publish: " + "npm_" + fakeTokenBody36 + " is not authorized",
		secrets: []string{fakeTokenBody36},
		want:    "npm publish: REDACTED is not authorized",
	},
	{
		name:    "SlackBotToken",
		in:      "slack: invalid_auth for " + "xoxb-" + fakeSlackBody,
		secrets: []string{fakeSlackBody, "AbCdEfGh"},
		want:    "slack: invalid_auth for REDACTED",
	},
	{
		name:    "SlackUserToken",
		in:      "slack: " + "xoxp-" + fakeSlackBody + " revoked",
		secrets: []string{"AbCdEfGh"},
		want:    "slack: REDACTED revoked",
	},
	{
		name:    "SlackAppToken",
		in:      "slack: " + "xoxa-" + fakeSlackBody + " revoked",
		secrets: []string{"AbCdEfGh"},
		want:    "slack: REDACTED revoked",
	},
	{
		name:    "SlackRefreshToken",
		in:      "slack: " + "xoxr-" + fakeSlackBody + " revoked",
		secrets: []string{"AbCdEfGh"},
		want:    "slack: REDACTED revoked",
	},
	{
		name:    "SlackLegacyToken",
		in:      "slack: " + "xoxs-" + fakeSlackBody + " revoked",
		secrets: []string{"AbCdEfGh"},
		want:    "slack: REDACTED revoked",
	},
	{
		name:    "SlackWebhook",
		in:      "POST https://hooks.slack.com/services/" + fakeSlackWebhookPath + ": 404 no_service",
		secrets: []string{fakeSlackWebhookPath, "B0456EFGH"},
		want:    "POST https://hooks.slack.com/services/REDACTED: 404 no_service",
	},
	{
		name:    "StripeLiveSecretKey",
		in:      "stripe: " + "sk_live_" + fakeTokenBody22 + " is expired",
		secrets: []string{fakeTokenBody22},
		want:    "stripe: REDACTED is expired",
	},
	{
		name:    "StripeTestSecretKey",
		in:      "stripe: " + "sk_test_" + fakeTokenBody22 + " is expired",
		secrets: []string{fakeTokenBody22},
		want:    "stripe: REDACTED is expired",
	},
	{
		name:    "StripeRestrictedKey",
		in:      "stripe: " + "rk_live_" + fakeTokenBody22 + " lacks a permission",
		secrets: []string{fakeTokenBody22},
		want:    "stripe: REDACTED lacks a permission",
	},
	{
		name:    "GoogleAPIKey",
		in:      "maps: API key " + "AIza" + fakeTokenBody35 + " not valid",
		secrets: []string{fakeTokenBody35},
		want:    "maps: API key REDACTED not valid",
	},
	{
		name:    "OpenSSHPrivateKey",
		in:      "ssh: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----\n: bad",
		secrets: []string{"b3BlbnNzaC1rZXktdjEA"},
		want:    "ssh: REDACTED\n: bad",
	},
	{
		name:    "ECPrivateKey",
		in:      "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBb\n-----END EC PRIVATE KEY-----",
		secrets: []string{"MHcCAQEEIBb"},
		want:    "REDACTED",
	},
	{
		name:    "EncryptedPrivateKey",
		in:      `"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkq\n-----END ENCRYPTED PRIVATE KEY-----" rejected`,
		secrets: []string{"MIIFHzBJBgkq"},
		want:    `"REDACTED" rejected`,
	},
	{
		name:    "PlainPrivateKey",
		in:      "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PRIVATE KEY-----",
		secrets: []string{"MIIEvQIBADAN"},
		want:    "REDACTED",
	},
	{
		name:    "PGPPrivateKey",
		in:      "gpg: -----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF0abc\n-----END PGP PRIVATE KEY BLOCK----- unusable",
		secrets: []string{"lQOYBF0abc"},
		want:    "gpg: REDACTED unusable",
	},
	{
		name:    "PrivateKeyCutShort",
		in:      "parse -----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\nqj7X",
		secrets: []string{"MIIBOgIBAAJBAK", "qj7X"},
		want:    "parse REDACTED",
	},
	{
		name:    "OpenSSHPrivateKeyCutShort",
		in:      "ssh: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA",
		secrets: []string{"b3BlbnNzaC1rZXktdjEA"},
		want:    "ssh: REDACTED",
	},
	{
		name:    "PGPPrivateKeyCutShort",
		in:      "gpg: -----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0abc",
		secrets: []string{"lQOYBF0abc"},
		want:    "gpg: REDACTED",
	},
}

// scrubNoFalsePositives are texts without secrets, which ScrubError must keep as they
// are, some of them near misses.
var scrubNoFalsePositives = []string{
	"",
	"connection refused",
	`pq: password authentication failed for user "bob"`,
	"invalid password: connection refused",
	"oauth2: bearer token expired",
	"Basic Auth failed",
	"http: named cookie not present",
	"dial tcp 10.0.0.1:5432: i/o timeout",
	"GET https://api.example.com:443/v1/orders?page=2&limit=50: 503",
	"max_retries=3 sslmode=disable",
	"password expired for user bob",
	"tokens: 3 used",
	"max_tokens: 4096",
	"token_count: 3\nkey: orders-42",
	"invalid token: expired",
	"password: ",
	"secret\nsecret: \n",
	"bypass: true",
	"x-request-id: 7f3a9c\nContent-Type: application/json",
	"GET https://github.com/idemkit/idem/pull/42: 404",
	"dial amqp://rabbit:5672/: connection refused",
	"mail to user@example.com bounced",
	"git@github.com:idemkit/idem.git: Permission denied (publickey)",
	"ghp is not a prefix we know; nor is ghp_short",
	"commit 3f786850e387550fdab836ed7e6dc881de23001b not found",
	"stripe publishable key " + "pk_live_" + fakeTokenBody22,
	"disk_test_integration1 failed; sk_live is not set",
	"slack: xoxb- token missing, xoxo",
	"npm_config_cache is not set",
	"hooks.slack.com: no such host",
	"AIza is a prefix",
	"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
	"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0C\n-----END PUBLIC KEY-----",
}

func TestScrubError(t *testing.T) {
	t.Parallel()

	t.Run("Secrets", func(t *testing.T) {
		t.Parallel()

		for _, tt := range scrubSecretTests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				got := ScrubError(tt.in, 0)
				for _, secret := range tt.secrets {
					require.NotContains(t, got, secret)
				}
				require.Contains(t, got, "REDACTED")
				if tt.want != "" {
					require.Equal(t, tt.want, got)
				}
				require.Equal(t, got, ScrubError(got, 0), "scrubbing twice changes nothing")
			})
		}
	})

	t.Run("NoFalsePositives", func(t *testing.T) {
		t.Parallel()

		for _, in := range scrubNoFalsePositives {
			require.Equal(t, in, ScrubError(in, 0))
		}
	})
}

func TestScrubErrorTruncate(t *testing.T) {
	t.Parallel()

	t.Run("DefaultMax", func(t *testing.T) {
		t.Parallel()
		long := strings.Repeat("x", 10_000)
		for _, max := range []int{0, -1} {
			got := ScrubError(long, max)
			require.Len(t, got, DefaultMaxErrorLength)
			require.True(t, strings.HasSuffix(got, truncatedMarker))
		}
		short := strings.Repeat("x", DefaultMaxErrorLength)
		require.Equal(t, short, ScrubError(short, 0))
	})

	t.Run("ValidUTF8WithinMax", func(t *testing.T) {
		t.Parallel()
		in := strings.Repeat("añ€😀", 20) // 1-, 2-, 3- and 4-byte runes
		for max := 1; max <= len(in)+1; max++ {
			got := ScrubError(in, max)
			require.LessOrEqual(t, len(got), max, "max %d", max)
			require.True(t, utf8.ValidString(got), "max %d: %q", max, got)
			if max >= len(in) {
				require.Equal(t, in, got)
				continue
			}
			if max >= len(truncatedMarker) {
				require.True(t, strings.HasSuffix(got, truncatedMarker), "max %d: %q", max, got)
				require.True(t, strings.HasPrefix(in, strings.TrimSuffix(got, truncatedMarker)))
				require.Greater(t, len(got), max-utf8.UTFMax, "max %d: cut no more than one rune short", max)
			} else {
				require.True(t, strings.HasPrefix(in, got))
			}
		}
	})

	t.Run("ScrubsBeforeTruncating", func(t *testing.T) {
		t.Parallel()
		in := "dial postgres://user:s3cr3tPW@db:5432/app " + strings.Repeat("y", 100)
		for max := 1; max <= len(in); max++ {
			got := ScrubError(in, max)
			for i := 2; i <= len("s3cr3tPW"); i++ {
				require.NotContains(t, got, "@"+"s3cr3tPW"[:i], "max %d", max)
				require.NotContains(t, got, ":"+"s3cr3tPW"[:i], "max %d", max)
			}
		}
	})

	t.Run("HugeTextIsReadOnlyAsFarAsItIsKept", func(t *testing.T) {
		t.Parallel()
		huge := "password=s3cret " + strings.Repeat("x", 8<<20) + " token=tail"
		got := ScrubError(huge, 0)
		require.LessOrEqual(t, len(got), DefaultMaxErrorLength)
		require.True(t, strings.HasPrefix(got, "password=REDACTED xxx"), got[:40])
		require.NotContains(t, got, "s3cret")
		require.True(t, strings.HasSuffix(got, "…(truncated)"))
	})

	t.Run("InvalidUTF8", func(t *testing.T) {
		t.Parallel()
		got := ScrubError("bad \xff\xfe byte", 0)
		require.True(t, utf8.ValidString(got))
		require.Equal(t, "bad \uFFFD byte", got)
	})

	t.Run("NULBytes", func(t *testing.T) {
		t.Parallel()
		got := ScrubError("nul\x00 in \xff\x00 text\x00", 0)
		require.NotContains(t, got, "\x00")
		require.Equal(t, "nul\uFFFD in \uFFFD\uFFFD text\uFFFD", got)
	})
}

func TestIsSecretKey(t *testing.T) {
	t.Parallel()

	tests := []struct {
		key  string
		want bool
	}{
		{"Authorization", true},
		{"Proxy-Authorization", true},
		{"Cookie", true},
		{"Set-Cookie", true},
		{"db_password", true},
		{"PASSWD", true},
		{"client_secret", true},
		{"X-Auth-Token", true},
		{"api-key", true},
		{"Api_Key", true},
		{"apikey", true},
		{"X-API-Key", true},
		{"aws_credentials", true},
		{"session_id", true},
		{"X-Hub-Signature-256", true},
		{"private-key", true},
		{"event_id", false},
		{"correlation_id", false},
		{"traceparent", false},
		{"content-type", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, IsSecretKey(tt.key))
		})
	}
}

func TestSanitizeMetadata(t *testing.T) {
	t.Parallel()

	t.Run("Nil", func(t *testing.T) {
		t.Parallel()
		require.Nil(t, SanitizeMetadata(nil))
		got := SanitizeMetadata(map[string]string{})
		require.NotNil(t, got)
		require.Empty(t, got)
	})

	t.Run("RedactsAndScrubs", func(t *testing.T) {
		t.Parallel()
		md := map[string]string{
			"Authorization":  "Bearer abc.def",
			"x-api-key":      "k3y",
			"event_id":       "evt-1",
			"correlation_id": "c-1",
			"source":         "postgres://app:s3cr3tPW@db/app",
			"note":           strings.Repeat("é", DefaultMaxMetadataValueLength),
		}
		original := maps.Clone(md)

		got := SanitizeMetadata(md)
		require.Equal(t, original, md, "input not modified")
		require.Equal(t, "REDACTED", got["Authorization"])
		require.Equal(t, "REDACTED", got["x-api-key"])
		require.Equal(t, "evt-1", got["event_id"])
		require.Equal(t, "c-1", got["correlation_id"])
		require.Equal(t, "postgres://app:REDACTED@db/app", got["source"])
		require.LessOrEqual(t, len(got["note"]), DefaultMaxMetadataValueLength)
		require.True(t, utf8.ValidString(got["note"]))
		require.True(t, strings.HasSuffix(got["note"], truncatedMarker))

		got["event_id"] = "changed"
		require.Equal(t, "evt-1", md["event_id"], "result is a new map")
	})

	t.Run("CapsEntriesInSortedOrder", func(t *testing.T) {
		t.Parallel()
		md := make(map[string]string)
		for i := range DefaultMaxMetadataEntries + 50 {
			md[fmt.Sprintf("key-%03d", i)] = "v"
		}
		got := SanitizeMetadata(md)
		require.Len(t, got, DefaultMaxMetadataEntries)
		require.Contains(t, got, "key-000")
		require.Contains(t, got, fmt.Sprintf("key-%03d", DefaultMaxMetadataEntries-1))
		require.NotContains(t, got, fmt.Sprintf("key-%03d", DefaultMaxMetadataEntries))
		require.Len(t, md, DefaultMaxMetadataEntries+50, "input not modified")
	})

	t.Run("DropsLongKeys", func(t *testing.T) {
		t.Parallel()
		longest := strings.Repeat("k", DefaultMaxMetadataKeyLength)
		tooLong := strings.Repeat("a", DefaultMaxMetadataKeyLength+1) // sorts first: must not take a slot
		got := SanitizeMetadata(map[string]string{longest: "1", tooLong: "2"})
		require.Equal(t, map[string]string{longest: "1"}, got)
	})
}

func FuzzScrubError(f *testing.F) {
	for _, seed := range []string{
		"postgres://u:pw@h/db", `password="x`, "Authorization: Basic xyz", `{"token":"t"}`,
		"a=b:c token:x@y", "Bearer ", "-----BEGIN PRIVATE KEY-----", "\xff=\xfe", "é€😀",
		"password: x\n- token: 'y", "{a: b, secret: c}", "x: token: y", "X-Api-Key: k", "n\x00ul",
		"nats://t@h", "ghp_" + fakeTokenBody36, "hooks.slack.com/services/T/B/x",
	} {
		f.Add(seed, 0)
		f.Add(seed, 7)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		max %= 64
		got := ScrubError(s, max)
		require.True(t, utf8.ValidString(got))
		require.NotContains(t, got, "\x00")
		if max <= 0 {
			max = DefaultMaxErrorLength
		}
		require.LessOrEqual(t, len(got), max)
	})
}

func FuzzNormalizeMessage(f *testing.F) {
	for _, seed := range []string{"order-12 'x' \"y\"", "2024-05-01T10:00:00Z", "x=-5e+3", "\xff1"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := NormalizeMessage(s)
		require.Equal(t, got, strings.Join(strings.Fields(got), " "))
	})
}

// benchmarkErrors are typical errors that reach a dead letter, about 300 bytes each:
// one holds a DSN password and a query-string token among ordinary words, the other
// no secret at all.
var benchmarkErrors = []struct{ name, text string }{
	{"Secrets", "handle order A-1042: charge customer 7731: POST https://api.payments.example.com/v1/charges?idempotency_key=ord-1042&access_token=t0k3n: " +
		"502 Bad Gateway: retry via queue: dial postgres://orders:s3cr3tPW@db.internal:5432/orders?sslmode=require: connect: connection refused (after 3 attempts, consumer orders)"},
	{"Plain", "handle order A-1042: charge customer 7731: POST https://api.payments.example.com/v1/charges?idempotency_key=ord-1042: " +
		"502 Bad Gateway: retry via queue: dial tcp 10.0.3.7:5432: connect: connection refused (after 3 attempts, last at 2024-05-01T10:00:00Z, consumer orders-projector-v2)"},
}

func BenchmarkScrubError(b *testing.B) {
	for _, bb := range benchmarkErrors {
		b.Run(bb.name, func(b *testing.B) {
			b.SetBytes(int64(len(bb.text)))
			for b.Loop() {
				ScrubError(bb.text, 0)
			}
		})
	}
}
