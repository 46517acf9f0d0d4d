#include "dataset/tokens.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "dataset/dataset.h"
#include "dataset/indexed_dataset.h"
#include "dataset/jsonl.h"
#include "dataset/synthetic.h"

namespace chunkflow::dataset {
namespace {

absl::Status Narrow(const std::vector<int64_t>& in, int64_t doc, const char* what,
                    std::vector<int32_t>* out) {
  out->resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] < std::numeric_limits<int32_t>::min() || in[i] > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("document ", doc, " ", what, " ", i, " is ",
                                                     in[i], ", beyond int32"));
    }
    (*out)[i] = static_cast<int32_t>(in[i]);
  }
  return absl::OkStatus();
}

absl::Status CheckDoc(int64_t doc, int64_t n) {
  if (doc < 0 || doc >= n) {
    return absl::OutOfRangeError(absl::StrCat("document ", doc, " is outside [0, ", n, ")"));
  }
  return absl::OkStatus();
}

class SyntheticSource : public TokenSource {
 public:
  SyntheticSource(SyntheticSpec spec, int64_t vocab)
      : spec_(std::move(spec)), vocab_(vocab), lengths_(GenerateLengths(spec_)) {}
  const std::vector<int64_t>& lengths() const override { return lengths_; }
  absl::Status Read(int64_t doc, std::vector<int32_t>* tokens,
                    std::vector<int32_t>* labels) const override {
    if (absl::Status s = CheckDoc(doc, num_documents()); !s.ok()) return s;
    std::vector<int64_t> t;
    SyntheticTokens(spec_, doc, vocab_, &t);
    labels->clear();
    return Narrow(t, doc, "token", tokens);
  }
  absl::StatusOr<int64_t> CountTargets(int64_t doc) const override {
    if (absl::Status s = CheckDoc(doc, num_documents()); !s.ok()) return s;
    return std::max<int64_t>(0, lengths_[doc] - 1);  // no labels: every next token
  }

 private:
  SyntheticSpec spec_;
  int64_t vocab_;
  std::vector<int64_t> lengths_;
};

class JsonlSource : public TokenSource {
 public:
  explicit JsonlSource(std::vector<JsonlRecord> records) : records_(std::move(records)) {
    for (const JsonlRecord& r : records_) lengths_.push_back(static_cast<int64_t>(r.input_ids.size()));
  }
  const std::vector<int64_t>& lengths() const override { return lengths_; }
  absl::Status Read(int64_t doc, std::vector<int32_t>* tokens,
                    std::vector<int32_t>* labels) const override {
    if (absl::Status s = CheckDoc(doc, num_documents()); !s.ok()) return s;
    if (absl::Status s = Narrow(records_[doc].input_ids, doc, "token", tokens); !s.ok()) return s;
    return Narrow(records_[doc].labels, doc, "label", labels);
  }

 private:
  std::vector<JsonlRecord> records_;
  std::vector<int64_t> lengths_;
};

class IndexedSource : public TokenSource {
 public:
  IndexedSource(std::unique_ptr<IndexedDataset> tokens, std::unique_ptr<IndexedDataset> labels)
      : tokens_(std::move(tokens)), labels_(std::move(labels)) {
    lengths_.assign(tokens_->document_lengths().begin(), tokens_->document_lengths().end());
  }
  const std::vector<int64_t>& lengths() const override { return lengths_; }
  absl::Status Read(int64_t doc, std::vector<int32_t>* tokens,
                    std::vector<int32_t>* labels) const override {
    if (absl::Status s = CheckDoc(doc, num_documents()); !s.ok()) return s;
    std::vector<int64_t> t;
    if (absl::Status s = tokens_->ReadDocument(doc, &t); !s.ok()) return s;
    if (absl::Status s = Narrow(t, doc, "token", tokens); !s.ok()) return s;
    labels->clear();
    if (!labels_) return absl::OkStatus();
    if (absl::Status s = labels_->ReadDocument(doc, &t); !s.ok()) return s;
    return Narrow(t, doc, "label", labels);
  }
  absl::StatusOr<int64_t> CountTargets(int64_t doc) const override {
    if (labels_) return TokenSource::CountTargets(doc);
    if (absl::Status s = CheckDoc(doc, num_documents()); !s.ok()) return s;
    return std::max<int64_t>(0, lengths_[doc] - 1);
  }

 private:
  std::unique_ptr<IndexedDataset> tokens_, labels_;
  std::vector<int64_t> lengths_;
};

}  // namespace

absl::StatusOr<int64_t> TokenSource::CountTargets(int64_t doc) const {
  std::vector<int32_t> tokens, labels;
  if (absl::Status s = Read(doc, &tokens, &labels); !s.ok()) return s;
  const std::vector<int32_t>& l = labels.empty() ? tokens : labels;
  int64_t n = 0;
  for (size_t p = 1; p < l.size(); ++p) n += l[p] != -100;  // kIgnoreIndex
  return n;
}

absl::StatusOr<std::unique_ptr<TokenSource>> TokenSource::Open(absl::string_view spec,
                                                               int64_t vocab_size) {
  if (absl::StartsWith(spec, "synthetic:")) {
    absl::StatusOr<SyntheticSpec> s = ParseSyntheticSpec(spec);
    if (!s.ok()) return s.status();
    return std::unique_ptr<TokenSource>(new SyntheticSource(*s, vocab_size));
  }
  if (absl::EndsWith(spec, ".jsonl")) {
    absl::StatusOr<std::vector<JsonlRecord>> r = ReadJsonl(spec);
    if (!r.ok()) return r.status();
    if (r->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(spec, ": the dataset has no documents"));
    }
    return std::unique_ptr<TokenSource>(new JsonlSource(std::move(*r)));
  }
  // Validate (and get the error messages of) the length reader first.
  if (absl::StatusOr<std::vector<int64_t>> lengths = ReadDocumentLengths(spec); !lengths.ok()) {
    return lengths.status();
  }
  std::string prefix(spec);
  for (const char* ext : {".idx", ".bin"}) {
    if (absl::EndsWith(prefix, ext)) prefix.resize(prefix.size() - 4);
  }
  absl::StatusOr<std::unique_ptr<IndexedDataset>> tokens = IndexedDataset::Open(prefix);
  if (!tokens.ok()) return tokens.status();
  // Labels: both <prefix>.labels.idx and .bin, or neither. One without the
  // other is an error: read as "no labels", a dataset converted with masked
  // prompts (-100) would silently train on them.
  std::unique_ptr<IndexedDataset> labels;
  const std::string lp = prefix + ".labels";
  const bool has_idx = std::filesystem::exists(lp + ".idx");
  const bool has_bin = std::filesystem::exists(lp + ".bin");
  if (has_idx != has_bin) {
    return absl::NotFoundError(absl::StrCat(
        lp, has_idx ? ".idx" : ".bin", " exists but ", lp, has_idx ? ".bin" : ".idx",
        " does not: the dataset's labels are half there; restore the missing file or remove "
        "both (then the tokens are the labels)"));
  }
  if (has_idx) {
    absl::StatusOr<std::unique_ptr<IndexedDataset>> l = IndexedDataset::Open(lp);
    if (!l.ok()) return l.status();
    if ((*l)->num_documents() != (*tokens)->num_documents()) {
      return absl::InvalidArgumentError(absl::StrCat(lp, " has ", (*l)->num_documents(),
                                                     " documents, ", prefix, " has ",
                                                     (*tokens)->num_documents()));
    }
    for (int64_t d = 0; d < (*tokens)->num_documents(); ++d) {
      if ((*l)->document_length(d) != (*tokens)->document_length(d)) {
        return absl::InvalidArgumentError(absl::StrCat(
            lp, ": document ", d, " has ", (*l)->document_length(d), " labels for ",
            (*tokens)->document_length(d), " tokens in ", prefix,
            " (the two were not converted together)"));
      }
    }
    labels = std::move(*l);
  }
  return std::unique_ptr<TokenSource>(new IndexedSource(std::move(*tokens), std::move(labels)));
}

}  // namespace chunkflow::dataset
