package dlq

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		in   string
		want string
	}{
		{"Empty", "", ""},
		{"NoSecrets", "https://api.example.com:443/v1/orders?page=2&limit=50#top", "https://api.example.com:443/v1/orders?page=2&limit=50#top"},
		{"KeptByteForByte", "HTTPS://Example.COM/a%2Fb/%7Euser?q=a+b&x=%41", "HTTPS://Example.COM/a%2Fb/%7Euser?q=a+b&x=%41"},
		{"UserAndPassword", "postgres://app:s3cret@db:5432/orders?sslmode=disable", "postgres://REDACTED@db:5432/orders?sslmode=disable"},
		{"EscapedPassword", "postgres://app:p%40ss@db/orders", "postgres://REDACTED@db/orders"},
		{"PasswordWithAtAndSlash", "postgres://u:p@ss/w0rd@db/app", "postgres://REDACTED@db/app"},
		{"LoneToken", "nats://s3cr3ttoken@nats:4222", "nats://REDACTED@nats:4222"},
		{"GitHubTokenAsUser", "https://" + "ghp_" + fakeTokenBody36 + "@github.com/org/repo.git", "https://REDACTED@github.com/org/repo.git"},
		{"NetworkPathReference", "//user:pw@host/path", "//REDACTED@host/path"},
		{
			"QueryParameters",
			"https://api.example.com/v1?page=2&access_token=t0k&sig=abc&Password=pw&token=&flag",
			"https://api.example.com/v1?page=2&access_token=REDACTED&sig=REDACTED&Password=REDACTED&token=&flag",
		},
		{
			"AmazonPresignedURL",
			"https://b.s3.amazonaws.com/k?X-Amz-Date=20240501T000000Z&X-Amz-Signature=abcdef0123&X-Amz-Security-Token=FwoGZX",
			"https://b.s3.amazonaws.com/k?X-Amz-Date=20240501T000000Z&X-Amz-Signature=REDACTED&X-Amz-Security-Token=REDACTED",
		},
		{"URLOnlyParameters", "https://h/p?key=k3y&AUTH=a1&jwt=j2&nkey=n3&keys=2&monkey=4", "https://h/p?key=REDACTED&AUTH=REDACTED&jwt=REDACTED&nkey=REDACTED&keys=2&monkey=4"},
		{"EscapedParameterName", "https://h/p?pass%77ord=pw&page=2", "https://h/p?pass%77ord=REDACTED&page=2"},
		{"FragmentParameters", "https://app.example.com/cb#access_token=t0k&state=xyz", "https://app.example.com/cb#access_token=REDACTED&state=xyz"},
		{"SlackWebhook", "https://hooks.slack.com/services/" + fakeSlackWebhookPath, "https://hooks.slack.com/services/REDACTED"},
		{"SQLitePath", "sqlite:///var/lib/idem/dlq.db", "sqlite:///var/lib/idem/dlq.db"},
		{"Opaque", "mailto:ops@example.com", "mailto:ops@example.com"},
		{"NotAURL", "host=db user=app password=s3cret", "host=db user=app password=REDACTED"},
		{"Unparsable", "postgres://app:s3cret@db:port/x", "postgres://app:REDACTED@db:port/x"},
		{"NULByte", "https://h/\x00?token=t0k", "https://h/\uFFFD?token=REDACTED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := RedactURL(tt.in)
			require.Equal(t, tt.want, got)
			require.Equal(t, got, RedactURL(got), "redacting twice changes nothing")
		})
	}

	t.Run("NeverTruncates", func(t *testing.T) {
		t.Parallel()
		in := "https://example.com/" + strings.Repeat("a", 2*DefaultMaxErrorLength) + "?token=t0k"
		require.Equal(t, strings.TrimSuffix(in, "t0k")+"REDACTED", RedactURL(in))
	})
}
