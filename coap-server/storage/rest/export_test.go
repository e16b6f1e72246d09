package rest

// The bounds on an error answer's code and message, for the tests.
const (
	MaxErrorCode    = maxErrorCode
	MaxErrorMessage = maxErrorMessage
)
