//! Reader for image-folder datasets: one sub-folder per class, holding PNG or
//! JPEG files (recognised by content, not name). Class indices follow the
//! sorted folder names and samples are ordered by class, then file name, so
//! the same tree always gives the same dataset. A root whose `train/` and
//! `test/` sub-folders are such trees is read by split; its class list is
//! the union of both, so a class missing from one split does not shift the
//! other classes' indices. Greyscale images give one channel, anything else
//! three (alpha dropped); all images must agree in size and channels.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat};
use ndarray::Array4;

use super::{DataError, Dataset, LoadOptions, Pixels, Split};

/// The format of an encoded image, from its first bytes.
fn sniff(head: &[u8]) -> Option<ImageFormat> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

/// Whether the name claims an image, so that content that is not one is an
/// error rather than a stray file to skip.
fn named_like_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// A directory's non-hidden entries sorted by name, as (name, path, is_dir).
/// Hidden entries (`.DS_Store`, `.ipynb_checkpoints`) are never data.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let io = |e| DataError::io(dir, e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, so linked class folders and files work.
        let is_dir = path.is_dir();
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The first bytes of a file, enough to sniff its format.
fn head(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    super::read_up_to(&mut f, 8).map_err(|e| DataError::io(path, e))
}

/// Whether some sub-folder of `dir` directly holds a PNG or JPEG file.
fn is_class_root(dir: &Path) -> Result<bool, DataError> {
    for (_, sub, is_dir) in entries(dir)? {
        if !is_dir {
            continue;
        }
        for (_, file, is_dir) in entries(&sub)? {
            if !is_dir && sniff(&head(&file)?).is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// `dir/train` and `dir/test`, if either is a class root.
fn split_roots(dir: &Path) -> Result<Option<[PathBuf; 2]>, DataError> {
    let roots = [dir.join("train"), dir.join("test")];
    for r in &roots {
        if r.is_dir() && is_class_root(r)? {
            return Ok(Some(roots));
        }
    }
    Ok(None)
}

/// Whether `dir` is an image-folder dataset, with or without splits.
pub(crate) fn detect(dir: &Path) -> Result<bool, DataError> {
    Ok(split_roots(dir)?.is_some() || is_class_root(dir)?)
}

/// Sub-folder names of `dir`, or none if it does not exist.
fn class_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(entries(dir)?.into_iter().filter(|e| e.2).map(|e| e.0).collect())
}

/// The most memory one decoded image may take. Decoding, the conversion to 8 bits
/// and the split into planes each hold a copy, so a 480 KB PNG of 13000x13000 black
/// pixels, which the `image` crate's own 512 MiB limit lets through, took 1.5 GB.
/// 64 MiB is a 4096x4096 RGBA image, far larger than any CNN input.
const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// Decodes one image, refusing one that would take more than [`MAX_IMAGE_BYTES`].
fn decode(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage, String> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => format!(
            "{format:?} image would take more than {} MiB once decoded; images this large are refused",
            MAX_IMAGE_BYTES >> 20
        ),
        e => format!("cannot decode {format:?} image: {e}"),
    })
}

/// Shape and pixels (`[C, H, W]` order) of one decoded image.
fn planes(img: &DynamicImage) -> ([usize; 3], Vec<u8>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_color() {
        let rgb = img.to_rgb8();
        let raw = rgb.as_raw();
        let mut out = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            out.extend(raw.iter().skip(c).step_by(3));
        }
        ([3, h, w], out)
    } else {
        ([1, h, w], img.to_luma8().into_raw())
    }
}

/// Reads the image-folder dataset at `dir` (the `opts.split` part if it has
/// `train/` and `test/`).
pub(crate) fn load(dir: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    let (root, classes) = match split_roots(dir)? {
        Some([train, test]) => {
            let mut names = class_folders(&train)?;
            names.extend(class_folders(&test)?);
            names.sort();
            names.dedup();
            let root = match opts.split {
                Split::Train => train,
                Split::Test => test,
            };
            if !root.is_dir() {
                return Err(DataError::malformed(
                    dir,
                    format!("image folders have no {} sub-folder", opts.split),
                ));
            }
            (root, names)
        }
        None => (dir.to_path_buf(), class_folders(dir)?),
    };

    let mut files = Vec::new();
    for (ci, name) in classes.iter().enumerate() {
        let class_dir = root.join(name);
        if !class_dir.is_dir() {
            continue;
        }
        for (_, path, is_dir) in entries(&class_dir)? {
            if !is_dir {
                files.push((ci as i64, path));
            }
        }
    }

    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut shape: Option<([usize; 3], PathBuf)> = None;
    let mut pixels: Vec<u8> = Vec::new();
    let mut labels = Vec::new();
    for (label, path) in files.iter() {
        if labels.len() >= limit {
            break;
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let Some(format) = sniff(&bytes) else {
            if named_like_image(path) {
                return Err(DataError::malformed(
                    path,
                    "named like an image but its content is neither PNG nor JPEG",
                ));
            }
            continue;
        };
        let img = decode(&bytes, format).map_err(|e| DataError::malformed(path, e))?;
        let (dims, data) = planes(&img);
        match &shape {
            None => {
                // Files listed so far are real, so this bounds the
                // allocation by what is on disk.
                let expected = files.len().min(limit);
                pixels.reserve_exact(expected.saturating_mul(data.len()));
                shape = Some((dims, path.clone()));
            }
            Some((first, first_path)) if *first != dims => {
                let [c, h, w] = dims;
                let [fc, fh, fw] = *first;
                return Err(DataError::malformed(
                    path,
                    format!(
                        "image is {w}x{h} with {c} channel(s), but the first image {} is \
                         {fw}x{fh} with {fc}; all images must match",
                        first_path.display()
                    ),
                ));
            }
            Some(_) => {}
        }
        pixels.extend_from_slice(&data);
        labels.push(*label);
    }

    let [c, h, w] = match shape {
        Some((dims, _)) => dims,
        None if opts.limit == Some(0) => [0, 0, 0],
        None => {
            return Err(DataError::malformed(
                &root,
                "no PNG or JPEG images in the class sub-folders",
            ))
        }
    };
    let pixels = Array4::from_shape_vec((labels.len(), c, h, w), pixels)
        .map_err(|e| DataError::malformed(&root, e.to_string()))?;
    Ok(Dataset {
        pixels: Pixels::U8(pixels),
        labels,
        classes: Some(classes),
        source: dir.to_path_buf(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

    fn opts(split: Split, limit: Option<usize>) -> LoadOptions {
        LoadOptions { split, limit }
    }

    /// A 3x2 RGB image whose red is `r`, green the column and blue the row.
    fn rgb(r: u8) -> RgbImage {
        RgbImage::from_fn(3, 2, |x, y| Rgb([r, x as u8, y as u8]))
    }

    #[test]
    fn classes_by_folder_then_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for c in ["cat", "ant", "bee"] {
            std::fs::create_dir(d.join(c)).unwrap();
        }
        rgb(10).save(d.join("cat/b.png")).unwrap();
        rgb(11).save(d.join("cat/a.png")).unwrap();
        // content decides: a PNG named .jpg is still read
        rgb(20).save_with_format(d.join("ant/x.jpg"), ImageFormat::Png).unwrap();
        RgbaImage::from_pixel(3, 2, Rgba([30, 0, 0, 7]))
            .save(d.join("bee/z.png"))
            .unwrap();
        std::fs::write(d.join("bee/notes.txt"), "not an image").unwrap();
        std::fs::write(d.join("ant/.hidden.png"), "junk").unwrap();

        assert!(detect(d).unwrap());
        let ds = super::super::load(d, &opts(Split::Train, None)).unwrap();
        assert_eq!(ds.classes, Some(vec!["ant".into(), "bee".into(), "cat".into()]));
        assert_eq!(ds.labels, vec![0, 1, 2, 2]);
        assert_eq!(ds.image_shape(), [3, 2, 3]);
        let Pixels::U8(a) = &ds.pixels else {
            panic!("folders give bytes")
        };
        let reds: Vec<u8> = (0..4).map(|i| a[[i, 0, 0, 0]]).collect();
        assert_eq!(reds, vec![20, 30, 11, 10]);
        assert_eq!(a[[2, 1, 1, 2]], 2); // green = column
        assert_eq!(a[[2, 2, 1, 2]], 1); // blue = row

        let two = load(d, &opts(Split::Train, Some(2))).unwrap();
        assert_eq!(two.labels, vec![0, 1]);
    }

    #[test]
    fn greyscale_jpeg_splits() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in ["train/ant", "train/bee", "test/bee"] {
            std::fs::create_dir_all(d.join(p)).unwrap();
        }
        let grey = |v: u8| GrayImage::from_pixel(8, 8, Luma([v]));
        grey(0).save(d.join("train/ant/0.jpg")).unwrap();
        grey(255).save(d.join("train/bee/0.jpg")).unwrap();
        grey(255).save(d.join("test/bee/0.jpg")).unwrap();
        assert!(detect(d).unwrap());
        let train = super::super::load(d, &opts(Split::Train, None)).unwrap();
        assert_eq!(train.image_shape(), [1, 8, 8]);
        assert_eq!(train.labels, vec![0, 1]);
        // "bee" keeps index 1 in test although "ant" is missing there
        let test = super::super::load(d, &opts(Split::Test, None)).unwrap();
        assert_eq!(test.labels, vec![1]);
        assert_eq!(test.classes, train.classes);
        let Pixels::U8(a) = &test.pixels else {
            panic!("folders give bytes")
        };
        assert!(a.iter().all(|&v| v > 250), "JPEG of white stays white");
    }

    #[test]
    fn mismatched_images_name_the_odd_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("a")).unwrap();
        std::fs::create_dir(d.join("b")).unwrap();
        rgb(1).save(d.join("a/1.png")).unwrap();
        rgb(2).save(d.join("a/2.png")).unwrap();
        RgbImage::new(4, 2).save(d.join("b/1.png")).unwrap();
        GrayImage::new(3, 2).save(d.join("b/2.png")).unwrap();
        let msg = load(d, &opts(Split::Train, None)).unwrap_err().to_string();
        assert!(
            msg.contains("b/1.png") && msg.contains("4x2") && msg.contains("a/1.png"),
            "{msg}"
        );
        std::fs::remove_file(d.join("b/1.png")).unwrap();
        let msg = load(d, &opts(Split::Train, None)).unwrap_err().to_string();
        assert!(msg.contains("b/2.png") && msg.contains("1 channel"), "{msg}");
    }

    #[test]
    fn corrupt_images_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("a")).unwrap();
        rgb(1).save(d.join("a/1.png")).unwrap();
        std::fs::write(d.join("a/2.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
        let msg = load(d, &opts(Split::Train, None)).unwrap_err().to_string();
        assert!(msg.contains("a/2.png") && msg.contains("decode"), "{msg}");
        std::fs::write(d.join("a/2.png"), b"text").unwrap();
        let msg = load(d, &opts(Split::Train, None)).unwrap_err().to_string();
        assert!(msg.contains("neither PNG nor JPEG"), "{msg}");
    }

    #[test]
    fn png_whose_pixels_would_take_half_a_gigabyte_is_refused() {
        // A 1x1 PNG whose header says 13000x13000: 507 MB of RGB once decoded, under
        // the image crate's 512 MiB limit. Filled with real (compressible) pixels,
        // such a 480 KB file made nnmend use 1.5 GB.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("a")).unwrap();
        rgb(1).save(d.join("a/1.png")).unwrap();
        let mut png = std::fs::read(d.join("a/1.png")).unwrap();
        png[16..24].copy_from_slice(&[0, 0, 0x32, 0xc8, 0, 0, 0x32, 0xc8]);
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
        std::fs::write(d.join("a/1.png"), &png).unwrap();
        let msg = load(d, &opts(Split::Train, None)).unwrap_err().to_string();
        assert!(
            msg.contains("a/1.png") && msg.contains("more than 64 MiB once decoded"),
            "{msg}"
        );
    }

    #[test]
    fn folders_without_images_are_not_detected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/readme.txt"), "x").unwrap();
        assert!(!detect(dir.path()).unwrap());
    }
}
