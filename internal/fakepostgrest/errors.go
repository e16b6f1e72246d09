package fakepostgrest

import (
	"errors"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// apiError is PostgREST's error body; status is the HTTP status.
type apiError struct {
	status  int
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Details *string `json:"details"`
	Hint    *string `json:"hint"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func badRequest(code, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: code, Message: msg}
}

func strOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// toAPIError maps an error to PostgREST's status codes
// (https://postgrest.org/en/stable/references/errors.html, "SQLSTATE to
// HTTP"): 42501 is 401 for anon and 403 otherwise.
func toAPIError(err error, role string) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		// The database could not be reached or the connection broke.
		return &apiError{status: http.StatusServiceUnavailable, Code: "PGRST000", Message: "Could not connect to the database"}
	}
	return &apiError{status: pgStatus(pe.Code, role), Code: pe.Code, Message: pe.Message, Details: strOrNil(pe.Detail), Hint: strOrNil(pe.Hint)}
}

func pgStatus(code, role string) int {
	switch code {
	case "23503", "23505":
		return http.StatusConflict
	case "25006":
		return http.StatusMethodNotAllowed
	case "42883", "42P01":
		return http.StatusNotFound
	case "P0001":
		return http.StatusBadRequest
	case "42P17":
		return http.StatusInternalServerError
	case "42501":
		if role == "anon" {
			return http.StatusUnauthorized
		}
		return http.StatusForbidden
	}
	switch {
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return http.StatusServiceUnavailable
	case strings.HasPrefix(code, "0L"), strings.HasPrefix(code, "0P"), strings.HasPrefix(code, "28"):
		return http.StatusForbidden
	case strings.HasPrefix(code, "09"), strings.HasPrefix(code, "25"), strings.HasPrefix(code, "2D"),
		strings.HasPrefix(code, "38"), strings.HasPrefix(code, "39"), strings.HasPrefix(code, "3B"),
		strings.HasPrefix(code, "40"), strings.HasPrefix(code, "54"), strings.HasPrefix(code, "55"),
		strings.HasPrefix(code, "57"), strings.HasPrefix(code, "58"), strings.HasPrefix(code, "P0"),
		strings.HasPrefix(code, "XX"):
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}
