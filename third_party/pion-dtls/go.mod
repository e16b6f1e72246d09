module github.com/pion/dtls/v3

require (
	github.com/pion/logging v0.2.4
	github.com/pion/transport/v5 v5.0.0
	golang.org/x/crypto v0.48.0
	golang.org/x/net v0.49.0
)

require golang.org/x/sys v0.41.0 // indirect

go 1.24.0
