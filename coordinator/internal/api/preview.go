package api

import (
	"context"

	ferryv1 "github.com/ferry-v2v/ferry/pkg/pb/ferry/v1"
)

// PreviewMigrationJobs checks a batch as CreateMigrationJobs does and
// says what it would use, without writing anything (see
// admission.Admission.Preview).
func (s *jobService) PreviewMigrationJobs(ctx context.Context, req *ferryv1.PreviewMigrationJobsRequest) (*ferryv1.PreviewMigrationJobsResponse, error) {
	resp, err := s.a.admission.Preview(ctx, req)
	return reply(ctx, s.a, resp, err)
}
