# Plugins for Packer >= 1.7 (`packer init deploy/packer/`). Kept apart from the
# template: the offline check in tests/deploy runs Packer 1.6.6, which has these
# builders built in and does not know the `required_plugins` block.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}
