# Bakes a machine image that carries the corral agent and the manifest of the
# image itself, then registers that manifest with the controller.
#
#   packer init deploy/packer/                      # plugins (plugins.pkr.hcl)
#   packer build -var controller=ctl.example.internal:7070 \
#     -var agent_wheel=dist/corral-0.1.0-py3-none-any.whl deploy/packer/
#
# The last provisioner runs `corral bake /`: nothing may change the root after
# it, or every instance of the image would start life drifted.

variable "image_name" {
  type        = string
  default     = "corral-base"
  description = "Image name recorded in image.json and in the AMI name."
}

variable "image_version" {
  type        = string
  default     = "0.1.0"
  description = "Image version; an image reference is never rebuilt with other content."
}

variable "agent_wheel" {
  type        = string
  default     = "dist/corral-0.1.0-py3-none-any.whl"
  description = "The corral wheel to install (python -m build --wheel)."
}

variable "controller" {
  type        = string
  default     = "corral-controller.example.internal:7070"
  description = "Controller address the image is registered with (HOST:PORT)."
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "source_ami" {
  type        = string
  default     = "ami-0123456789abcdef0"
  description = "Base AMI, by id (ids are immutable; names are not)."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

locals {
  image_dir  = "/usr/share/corral/image"
  output_dir = "build/${var.image_name}-${var.image_version}"
}

source "amazon-ebs" "corral" {
  region        = var.region
  source_ami    = var.source_ami
  instance_type = var.instance_type
  ssh_username  = "admin"
  ami_name      = "${var.image_name}-${var.image_version}"
  tags = {
    "corral:image-name"    = var.image_name
    "corral:image-version" = var.image_version
  }
}

build {
  sources = ["source.amazon-ebs.corral"]

  provisioner "file" {
    source      = var.agent_wheel
    destination = "/tmp/corral.whl"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/corral-agent.service"
    destination = "/tmp/corral-agent.service"
  }

  # Install the agent and its hardened unit; configuration (controller address,
  # group, TLS files) is injected at boot into /etc/corral/agent.env, never baked.
  provisioner "shell" {
    execute_command = "sudo -E sh -eux '{{ .Path }}'"
    inline = [
      "apt-get update -q",
      "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv",
      "python3 -m venv /opt/corral",
      "/opt/corral/bin/pip install --no-cache-dir /tmp/corral.whl",
      "ln -sf /opt/corral/bin/corral-agent /usr/bin/corral-agent",
      "ln -sf /opt/corral/bin/corral /usr/bin/corral",
      "install -m 0644 /tmp/corral-agent.service /etc/systemd/system/corral-agent.service",
      "systemctl enable corral-agent.service",
      "rm -f /tmp/corral.whl /tmp/corral-agent.service",
      "apt-get clean",
      "rm -rf /var/lib/apt/lists/*",
      # Per-instance identity is created at first boot, not baked.
      "truncate -s 0 /etc/machine-id",
    ]
  }

  # Last change to the root: record what every instance of this image must be.
  provisioner "shell" {
    execute_command = "sudo -E sh -eux '{{ .Path }}'"
    inline = [
      "corral bake / --out ${local.image_dir} --name ${var.image_name} --version ${var.image_version} --strict",
    ]
  }

  provisioner "file" {
    direction   = "download"
    source      = "${local.image_dir}/"
    destination = "${local.output_dir}/"
  }

  post-processor "manifest" {
    output     = "${local.output_dir}/packer-manifest.json"
    strip_path = true
    custom_data = {
      image_name      = var.image_name
      image_version   = var.image_version
      corral_wheel    = basename(var.agent_wheel)
      corral_image    = "${local.output_dir}/image.json"
      corral_manifest = "${local.output_dir}/manifest.pb"
    }
  }

  # The controller learns the image (manifest, root, digest) once; it refuses a
  # second, different manifest for the same reference.
  post-processor "shell-local" {
    environment_vars = ["CORRAL_CONTROLLER=${var.controller}"]
    inline           = ["corral image register ${local.output_dir}"]
  }
}
